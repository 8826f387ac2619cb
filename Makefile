# The two commands of the README. Both create the virtual environment on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench lint

$(BIN)/modelshield: pyproject.toml
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,onnx]'
	touch $(BIN)/modelshield

demo: $(BIN)/modelshield
	$(BIN)/modelshield demo --out results/demo

test: $(BIN)/modelshield
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/modelshield
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(BIN)/modelshield
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/tramer2016.py
	$(BIN)/python bench/knockoff_vs_art.py

lint: $(BIN)/modelshield
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
