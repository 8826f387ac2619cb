"""Run the ``modelshield`` command in-process, as its entry point runs it (one-line errors and
exit codes included), without the seconds a fresh interpreter takes to import the stack.

tests/test_cli.py keeps one smoke run in a real subprocess."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass

from modelshield.cli import main


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> Run:
    """``modelshield ARGS`` through :func:`modelshield.cli.main`: exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["modelshield", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return Run(code, out.getvalue(), err.getvalue())
