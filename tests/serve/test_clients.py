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
from contextlib import contextmanager
from dataclasses import dataclass
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
    meta = tc.get_model_metadata("digits-lr", headers=headers)  # to a key that may use it
    assert meta["inputs"][0]["shape"] == [-1, 64]
    with pytest.raises(InferenceServerException, match="API key"):
        tc.get_model_metadata("digits-lr")
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


@contextmanager
def _serve_mlserver(folder: Path, models: dict[str, dict[str, Any]]) -> Iterator[str]:
    """MLServer serving ``models`` (name: its model-settings.json) from ``folder``, where
    their files lie in a folder of each name; yields its URL once every model is ready."""
    binary = _mlserver()
    for name, settings in models.items():
        (folder / name / "model-settings.json").write_text(json.dumps({"name": name,
                                                                       **settings}))
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
            waiting = set(models)
            while waiting:
                try:
                    waiting = {n for n in waiting
                               if c.get(f"/v2/models/{n}/ready").status_code != 200}
                except Exception:
                    pass
                if waiting and (time.time() > deadline or proc.poll() is not None):
                    pytest.fail(f"MLServer did not start (waiting for {sorted(waiting)})")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Any]]:
    """MLServer serving an owner's gradient-boosted trees (a joblib file) over KServe v2."""
    X, y = load_wine(return_X_y=True)
    model = GradientBoostingClassifier(random_state=0, n_estimators=30).fit(X[::2], y[::2])
    folder = tmp_path_factory.mktemp("mlserver")
    (folder / "wine").mkdir()
    joblib.dump(model, folder / "wine" / "model.joblib")
    with _serve_mlserver(folder, {"wine": {"implementation": "mlserver_sklearn.SKLearnModel",
                                           "parameters": {"uri": "./model.joblib"}}}) as url:
        yield url, model, X[1::2]


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


@dataclass(frozen=True)
class Boosters:
    """MLServer serving an owner's XGBoost and LightGBM boosters (its XGBoost and LightGBM
    runtimes), the owner's files of them, and the owner's data files."""

    url: str
    files: dict[str, Path]
    data: dict[str, Path]
    X: dict[str, np.ndarray]
    box: dict[str, tuple[list[float], list[float]]]  # each model's domain: low, high


@pytest.fixture(scope="module")
def boosters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boosters]:
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.datasets import make_classification

    python = Path(_mlserver()).parent / "python"
    if subprocess.run([str(python), "-c", "import mlserver_xgboost, mlserver_lightgbm"],
                      capture_output=True).returncode != 0:
        what = ("MLServer's XGBoost and LightGBM runtimes are not installed beside it "
                "(make installs them in .venv-mlserver; an older one: remove it and rerun)")
        pytest.fail(what) if os.environ.get("CI") else pytest.skip(what)
    folder = tmp_path_factory.mktemp("mlserver-boosters")
    tasks = {"xgb-three": 3, "lgb-three": 3, "lgb-two": 2}
    files, data, rows, box = {}, {}, {}, {}
    for name, classes in tasks.items():
        X, y = make_classification(900, 6, n_informative=4, n_classes=classes,
                                   n_clusters_per_class=1, class_sep=1.5, random_state=classes)
        (folder / name).mkdir()
        if name.startswith("xgb"):
            files[name] = folder / name / "model.json"
            xgb.XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1).fit(
                X[:500], y[:500]).save_model(files[name])
        else:
            files[name] = folder / name / "model.txt"
            params = {"objective": "multiclass" if classes > 2 else "binary", "verbose": -1,
                      "num_leaves": 7, "num_threads": 1, **({"num_class": classes}
                                                            if classes > 2 else {})}
            lgb.train(params, lgb.Dataset(X[:500], y[:500]), num_boost_round=30).save_model(
                files[name])
        data[name] = folder / f"{name}.npz"
        np.savez(data[name], X_test=X[700:], y_test=y[700:], pool=X[500:700], low=X.min(0),
                 high=X.max(0))
        rows[name], box[name] = X[700:], (X.min(0).tolist(), X.max(0).tolist())
    runtimes = {name: {"implementation": "mlserver_xgboost.XGBoostModel" if name.startswith(
        "xgb") else "mlserver_lightgbm.LightGBMModel",
        "parameters": {"uri": f"./{files[name].name}"}} for name in tasks}
    with _serve_mlserver(folder, runtimes) as url:
        yield Boosters(url, files, data, rows, box)


@pytest.mark.slow
def test_the_gateway_fronts_mlserver_xgboost_and_lightgbm_and_a_copy_is_scored(
        boosters: Boosters, tmp_path: Path) -> None:
    """MLServer's XGBoost runtime (predict_proba) and LightGBM runtime (predict: the
    probabilities; for two classes, the second class's alone) behind the gateway: its answers
    are the owner's files' answers, and a knockoff over HTTP from the CLI is scored against
    the owner's file on the owner's data."""
    from typer.testing import CliRunner

    from modelshield.cli import app
    from modelshield.serve.factory import build_gateway
    from modelshield.victims import load_model_file

    b = boosters
    shields = build_gateway({"audit_url": f"sqlite:///{tmp_path}/a.db",
                             "tiers": {"t": {"max_batch": 500}},
                             "models": [{"upstream": b.url, "name": name,
                                         "upstream_output": "predict_proba"
                                         if name.startswith("xgb") else "predict",
                                         "classes": [str(c) for c in range(3 if "three" in name
                                                                           else 2)],
                                         "low": b.box[name][0], "high": b.box[name][1]}
                                        for name in b.files]})
    key = shields[0].store.create_key("t")[0]
    rows = {}
    with live_app(create_app(shields)) as client:
        for name, path in b.files.items():
            x = b.X[name][:50]
            r = client.post(f"/v1/models/{name}/predict", json={"inputs": x.tolist()},
                            headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            owner = load_model_file(path).predict(x)
            assert r.json()["labels"] == owner.labels.tolist()
            assert np.allclose(r.json()["probabilities"], owner.probabilities, atol=1e-6)
            out = tmp_path / f"{name}.json"
            res = CliRunner().invoke(app, [
                "attack", "--target", str(client.base_url), "--api-key", key, "--model", name,
                "--model-file", str(path), "--data", str(b.data[name]), "--attack", "knockoff",
                "--budget", "200", "--param", "source=pool", "--param", "student=forest",
                "--json", str(out)])
            assert res.exit_code == 0, (name, res.output)
            rows[name] = json.loads(out.read_text())
    for s in shields:
        s.close()
    for name, row in rows.items():
        assert row["status"] == "ok" and row["queries"] == 200, row
        assert row["test_rows"] == 200 and row["fidelity_test"] >= 0.85, (name, row)


@pytest.mark.slow
def test_an_upstream_answering_labels_for_probabilities_is_a_502_naming_the_output(
        boosters: Boosters, tmp_path: Path) -> None:
    """MLServer's XGBoost runtime asked for ``predict`` answers class labels, one value a
    row: the gateway says it is no probability, and names the setting, instead of serving
    labels 0, 1, 2 as scores."""
    low, high = boosters.box["xgb-three"]
    shield = build_shield({"model": {"upstream": boosters.url, "name": "xgb-three",
                                     "upstream_output": "predict", "classes": ["0", "1", "2"],
                                     "low": low, "high": high},
                           "audit_url": f"sqlite:///{tmp_path}/a.db", "tiers": {"t": {}}})
    with pytest.raises(Denied) as info:
        shield.handle(shield.store.create_key("t")[0], boosters.X["xgb-three"][:20])
    assert info.value.status == 502 and "model.upstream_output" in str(info.value)
    shield.close()
