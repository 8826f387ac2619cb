"""The audit's cells, and the shadow models of its membership inference, on a real Ray
cluster: a local head started with `ray start`, joined by address. The results are those
of the process pool, and the cache and report stay on this machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelshield.audit.runner import run_audit
from modelshield.audit.scenario import load_scenario
from modelshield.cli import app
from modelshield.errors import ConfigError
from tests.servers import free_port

SCENARIO: dict[str, Any] = {
    "name": "ray", "target": {"victim": "wine-tree"},
    "attackers": [{"attack": "knockoff", "params": {"source": "pool"}, "budgets": [20, 40]}],
    "defenses": [{"name": "none"}, {"name": "labels", "policy": "label"}],
    "benign": {"accounts": 1, "archetypes": ["iid", "batch"]},
    "privacy": {"attacks": ["loss", "lira:fixed_variance=true"], "shadows": 4},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray head on a free port, stopped afterwards."""
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists():
        pytest.fail("ray is not installed; the dev extras include it")
    port = free_port()
    tmp = Path("/tmp") / f"ray-ms-{port}"  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", f"--temp-dir={tmp}", "--disable-usage-stats"],
                   check=True, capture_output=True, timeout=180, env=env)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, timeout=120,
                       env=env)
        shutil.rmtree(tmp, ignore_errors=True)


def _numbers(doc: dict[str, Any]) -> list[Any]:
    out = []
    for c in doc["cells"]:
        if c["kind"] == "attack":
            out.append((c["defense"], c["budget"], c["status"], c.get("fidelity_test"),
                        c["queries"]))
        elif c["kind"] == "privacy":
            out.append((c["defense"], [(r["attack"], r["status"], r.get("auc"))
                                       for r in c["attacks"]]))
        else:
            out.append((c["defense"], c["accuracy"], c["flagged_share"]))
    return out


@pytest.mark.slow
def test_cells_and_shadows_on_a_ray_cluster_match_the_process_pool(
        cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_scenario(SCENARIO)
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path / "here"))
    local = run_audit(s, tmp_path / "local", workers=1)
    # The driver's MODELSHIELD_CACHE travels to the workers: a fresh one, so the shadow
    # models are trained there, as Ray tasks.
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path / "cluster"))
    remote = run_audit(s, tmp_path / "remote", executor="ray", address=cluster)
    assert _numbers(remote) == _numbers(local)
    assert (tmp_path / "remote" / "cells").is_dir()
    assert list((tmp_path / "cluster" / "shadows").glob("*.npz"))
    rows = next(c for c in remote["cells"] if c["kind"] == "privacy")["attacks"]
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_a_bad_executor_or_address_is_refused(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    runner = CliRunner()
    r = runner.invoke(app, ["audit", str(path), "--executor", "dask"])
    assert isinstance(r.exception, ConfigError) and "'process' or 'ray'" in str(r.exception)
    r = runner.invoke(app, ["audit", str(path), "--address", "10.0.0.1:6379"])
    assert isinstance(r.exception, ConfigError) and "--executor ray" in str(r.exception)
