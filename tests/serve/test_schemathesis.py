"""Schemathesis over the gateway's own OpenAPI: generated requests (valid, edge-case and
malformed) against the classifier gateway and the language-model gateway, each over a real
socket. Not one may get a 5xx. Slow: CI runs it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from tests.servers import live_app


def _st() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[dev]')")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("model", [{"builtin": "digits-lr"}, {"lm": "lm-tiny"}],
                         ids=["classifier", "language-model"])
def test_no_generated_request_gets_a_5xx(tmp_path: Path, model: dict[str, Any]) -> None:
    shield = build_shield({"model": model, "audit_url": f"sqlite:///{tmp_path}/a.db",
                                 "auth_failure_limits": None,
                                 "tiers": {"t": {"max_batch": 20,
                                                 "llm": {"max_tokens": 16}}}})
    key = shield.store.create_key("t")[0]
    with live_app(create_app(shield)) as client:
        run = subprocess.run([_st(), "run", f"{client.base_url}/openapi.json",
                              "--checks", "not_a_server_error", "--max-examples", "60",
                              "--seed", "0", "--no-color",
                              "--header", f"Authorization: Bearer {key}"],
                             capture_output=True, text=True, timeout=900)
    shield.close()
    assert run.returncode == 0, run.stdout[-4000:]
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated is not None and int(generated.group(1)) >= 1000, run.stdout[-2000:]
    print(f"schemathesis {model}: {generated.group(0)}")
