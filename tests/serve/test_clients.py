"""Clients and servers no one here wrote: NVIDIA's ``tritonclient`` (KServe v2 over HTTP)
against the gateway, and the gateway fronting Seldon's MLServer with its scikit-learn
runtime. Over real sockets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import tritonclient.http as triton
from httpx import Client as HttpClient
from sklearn.datasets import load_wine
from sklearn.ensemble import GradientBoostingClassifier
from tritonclient.utils import InferenceServerException

from modelshield.defenses.shield import Shield
from modelshield.errors import Denied
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from tests.servers import free_port, live_app


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[HttpClient, Shield, str]]:
    shield = build_shield({"model": {"builtin": "digits-lr"},
                           "audit_url": f"sqlite:///{tmp_path}/a.db",
                           "tiers": {"t": {"policy": "round:3", "max_batch": 8}}})
    key = shield.store.create_key("t")[0]
    with live_app(create_app(shield)) as client:
        yield client, shield, key
    shield.close()


def test_tritonclient_reads_metadata_and_infers(gateway: Any) -> None:
    client, shield, key = gateway
    url = str(client.base_url).removeprefix("http://")
    tc = triton.InferenceServerClient(url)
    headers = {"Authorization": f"Bearer {key}"}
    assert tc.is_server_ready() and tc.is_model_ready("digits-lr")
    meta = tc.get_model_metadata("digits-lr")
    assert meta["inputs"][0]["shape"] == [-1, 64]
    x = np.full((3, 64), 2.0)
    inp = triton.InferInput("input-0", list(x.shape), "FP64")
    inp.set_data_from_numpy(x, binary_data=False)
    out = tc.infer("digits-lr", [inp], headers=headers, outputs=[
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("probabilities", binary_data=False)])
    labels = out.as_numpy("label")
    assert labels.tolist() == shield.model.predict(x).labels.tolist()
    probs = out.as_numpy("probabilities")
    assert probs.shape == (3, 10) and np.allclose(probs, np.round(probs, 3))
    too_many = triton.InferInput("input-0", [9, 64], "FP64")
    too_many.set_data_from_numpy(np.zeros((9, 64)), binary_data=False)
    with pytest.raises(InferenceServerException, match="at most 8 rows"):
        tc.infer("digits-lr", [too_many], headers=headers)
    with pytest.raises(InferenceServerException, match="API key"):
        tc.infer("digits-lr", [inp])
    tc.close()


def _mlserver() -> str:
    """The ``mlserver`` command: from MLSERVER_BIN, or beside this interpreter. MLServer
    pins an older FastAPI than the gateway's, so .ci/run installs it in its own venv."""
    found = os.environ.get("MLSERVER_BIN") or shutil.which(
        "mlserver", path=str(Path(sys.executable).parent)) or shutil.which("mlserver")
    if found is None or not Path(found).exists():
        if os.environ.get("CI"):
            pytest.fail("MLServer is not installed (.ci/run installs it in .venv-mlserver)")
        pytest.skip("MLServer is not installed; set MLSERVER_BIN (see .ci/run)")
    return found


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Any]]:
    """MLServer serving an owner's gradient-boosted trees (a joblib file) over KServe v2."""
    binary = _mlserver()
    X, y = load_wine(return_X_y=True)
    model = GradientBoostingClassifier(random_state=0, n_estimators=30).fit(X[::2], y[::2])
    folder = tmp_path_factory.mktemp("mlserver")
    (folder / "wine").mkdir()
    joblib.dump(model, folder / "wine" / "model.joblib")
    (folder / "wine" / "model-settings.json").write_text(json.dumps({
        "name": "wine", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}}))
    port, grpc, metrics = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": grpc, "metrics_port": metrics, "host": "127.0.0.1",
        "parallel_workers": 0}))
    proc = subprocess.Popen([binary, "start", str(folder)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        with HttpClient(base_url=url, timeout=5) as c:
            while True:
                try:
                    if c.get("/v2/models/wine/ready").status_code == 200:
                        break
                except Exception:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("MLServer did not start")
                time.sleep(0.5)
        yield url, model, X[1::2]
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.slow
def test_the_gateway_fronts_mlserver(mlserver: Any, tmp_path: Path) -> None:
    url, model, X = mlserver
    shield = build_shield({
        "model": {"upstream": url, "name": "wine", "classes": ["0", "1", "2"],
                  "upstream_output": "predict_proba",
                  "low": (X.min(0) * 0.5).tolist(), "high": (X.max(0) * 1.5).tolist()},
        "audit_url": f"sqlite:///{tmp_path}/a.db",
        "tiers": {"t": {"policy": "label", "limits": {"rows": "20/hour"}}}})
    key = shield.store.create_key("t")[0]
    with live_app(create_app(shield)) as client:
        r = client.post("/v1/models/wine/predict", json={"inputs": X[:10].tolist()},
                        headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        assert r.json()["labels"] == model.predict(X[:10]).tolist()
        assert "probabilities" not in r.json()  # the tier's policy holds at the front
        r = client.post("/v1/models/wine/predict", json={"inputs": X[:11].tolist()},
                        headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 429  # the front's own limits: 21 rows > 20 an hour
    assert shield.store.count(answered=True) == 1
    shield.close()
    # Without the output's name, the gateway says what the upstream returned.
    plain = build_shield({"model": {"upstream": url, "name": "wine", "classes": ["0", "1", "2"],
                                    "low": 0, "high": 2000, "n_features": 13},
                          "audit_url": f"sqlite:///{tmp_path}/b.db", "tiers": {"t": {}}})
    with pytest.raises(Denied) as info:
        plain.handle(plain.store.create_key("t")[0], X[:2])
    assert info.value.status == 502 and "upstream_output" in str(info.value)
    plain.close()


def test_an_attack_over_v2_sees_a_refusal_as_blocked(gateway: Any) -> None:
    from modelshield.errors import Blocked
    from modelshield.oracle.http import HttpOracle

    client, _, key = gateway
    oracle = HttpOracle(str(client.base_url), key, model="digits-lr", client=client,
                        protocol="v2")
    with pytest.raises(Blocked) as info:
        oracle.query(np.full((1, 64), 99.0))  # outside the digits' 0..16
    assert info.value.code == "out_of_domain" and "outside feature 0" in str(info.value)
