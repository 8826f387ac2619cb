"""Every benchmark script imports and answers ``--help`` (run nothing else: they take minutes
to hours)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
# Served by uvicorn in a subprocess, and load a model when imported: not scripts.
APPS = {"bare_app", "bare_lm_app"}
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py")
                 if not p.stem.startswith("_") and p.stem not in APPS | {"harness"})


@pytest.fixture(autouse=True)
def bench_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    # were a script to run after all, its result goes here, not over a committed one
    monkeypatch.setattr(importlib.import_module("harness"), "RESULTS", tmp_path)


def test_the_scripts_are_found() -> None:
    assert len(SCRIPTS) > 30


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports_and_answers_help(name: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_harness_arguments_and_run_cells() -> None:
    harness = importlib.import_module("harness")
    args = harness.arguments("d", seeds=[0, 1], workers=2, out="x").parse_args(
        ["--seeds", "3", "--out", "y"])
    assert (args.seeds, args.workers, args.out) == ([3], 2, "y")
    assert harness.run_cells(abs, [-1, -2, 3], 1) == [1, 2, 3]
