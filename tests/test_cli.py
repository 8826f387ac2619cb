"""The CLI in-process: listings, one attack with JSON out, and errors without tracebacks;
one smoke run of the command in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshield.cli import app
from tests.cli import Run, run_cli

runner = CliRunner()


@pytest.mark.parametrize(("command", "expected"), [
    ("victims", "digits-mlp"), ("victims", "chat-assistant"), ("attacks", "path-finding"),
    ("attacks", "prompt-leak"), ("policies", "reverse-sigmoid")])
def test_listings(command: str, expected: str) -> None:
    result = runner.invoke(app, [command])
    assert result.exit_code == 0 and expected in result.output


def test_attack_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["attack", "--victim", "breast-cancer-lr", "--attack",
                                 "equation-solving", "--budget", "100", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["queries"] == 31 + 3 and data["fidelity_test"] == 1.0  # d+1, 3 checked
    assert data["info"]["exact"] is True


def _run(*args: str) -> Run:
    return run_cli(*args)


def test_the_installed_command_runs_in_a_fresh_interpreter() -> None:
    """The one smoke run in a subprocess: the entry point, its exit code and its one-line
    error (the other CLI tests run it in-process, tests/cli.py)."""
    proc = subprocess.run([sys.executable, "-m", "modelshield.cli", "attack", "--victim",
                           "mnist", "--attack", "knockoff"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "Unknown victim 'mnist'" in " ".join((proc.stderr + proc.stdout).split())
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["attack", "--victim", "mnist", "--attack", "knockoff"], "Unknown victim 'mnist'"),
    (["attack", "--victim", "digits-lr", "--attack", "steal"], "Unknown attack 'steal'"),
    (["attack", "--victim", "digits-lr", "--attack", "knockoff", "--policy", "blur"],
     "Unknown output policy 'blur'"),
    (["attack", "--victim", "digits-lr", "--attack", "knockoff", "--param", "depth=3"],
     "key one of source, labels"),
    (["attack", "--victim", "digits-lr", "--attack", "knockoff", "--budget", "0"],
     "budget"),
    (["prompt-leak", "--target", "http://127.0.0.1:9"], "--target needs --api-key"),
    (["prompt-leak", "--probe", "telepathy"], "'probes' parameter must be some of"),
])
def test_bad_input_exits_2_with_a_message_and_no_traceback(args: list[str], message: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 2
    assert message in " ".join((proc.stderr + proc.stdout).split())
    assert "Traceback" not in proc.stderr


def test_refused_attack_exits_3_and_says_why() -> None:
    proc = _run("attack", "--victim", "wine-tree", "--attack", "path-finding", "--policy", "label")
    assert proc.returncode == 3
    assert "needs leaf identity" in " ".join(proc.stdout.split())
