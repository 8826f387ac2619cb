"""Each model format an owner serves, end to end, the way a user takes it: the file served by
the gateway (``model.file``), attacked over HTTP from the CLI (``modelshield attack --target
... --model-file ... --data ...``) with the clone scored on the owner's data, and audited
(``modelshield audit`` with a ``file`` target). The models are built here, small, apart
from the zoo: XGBoost and LightGBM (boosters and scikit-learn API), ONNX and TorchScript."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
import yaml
from sklearn.datasets import make_classification
from typer.testing import CliRunner

from modelshield.cli import app
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_gateway
from tests.servers import live_app

runner = CliRunner()
X, Y = make_classification(n_samples=1500, n_features=8, n_informative=5, n_redundant=1,
                           n_classes=3, n_clusters_per_class=1, class_sep=1.5, random_state=4)
TRAIN, POOL, TEST = slice(0, 700), slice(700, 1100), slice(1100, 1500)


def _xgb_booster(path: Path) -> Any:
    model = xgb.XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1).fit(X[TRAIN], Y[TRAIN])
    model.save_model(path)
    return model.predict_proba


def _xgb_sklearn(path: Path) -> Any:
    model = xgb.XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1).fit(X[TRAIN], Y[TRAIN])
    joblib.dump(model, path)
    return model.predict_proba


def _lgb_booster(path: Path) -> Any:
    params = {"objective": "multiclass", "num_class": 3, "num_leaves": 7, "verbose": -1,
              "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X[TRAIN], Y[TRAIN]), num_boost_round=30)
    booster.save_model(path)
    return booster.predict


def _lgb_sklearn(path: Path) -> Any:
    model = lgb.LGBMClassifier(n_estimators=30, num_leaves=7, n_jobs=1, verbose=-1)
    joblib.dump(model.fit(X[TRAIN], Y[TRAIN]), path)
    return model.predict_proba


def _onnx(path: Path) -> Any:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(X[TRAIN], Y[TRAIN])
    path.write_bytes(to_onnx(model, X[:1].astype(np.float32),
                             options={"zipmap": False}).SerializeToString())
    return model.predict_proba


def _torchscript(path: Path) -> Any:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    x, y = torch.as_tensor(X[TRAIN], dtype=torch.float32), torch.as_tensor(Y[TRAIN])
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.jit.script(net.eval()).save(str(path))

    def proba(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.as_tensor(rows, dtype=torch.float32)), 1).numpy()
    return proba


FORMATS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "xgboost-booster": (".json", _xgb_booster),
    "xgboost-sklearn": (".joblib", _xgb_sklearn),
    "lightgbm-booster": (".txt", _lgb_booster),
    "lightgbm-sklearn": (".joblib", _lgb_sklearn),
    "onnx": (".onnx", _onnx),
    "torchscript": (".pt", _torchscript),
}


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], dict[str, Any]]:
    """One model file a format, and the owner's data file they share."""
    folder = tmp_path_factory.mktemp("formats")
    np.savez(folder / "data.npz", X_test=X[TEST], y_test=Y[TEST], pool=X[POOL],
             low=X.min(0), high=X.max(0))
    files, probas = {}, {}
    for name, (suffix, build) in FORMATS.items():
        files[name] = folder / f"{name}{suffix}"
        probas[name] = build(files[name])
    return folder / "data.npz", files, probas


@pytest.mark.slow
def test_each_format_is_served_and_copied_over_http_from_the_cli(owner: Any,
                                                                 tmp_path: Path) -> None:
    """All six formats behind one gateway; a knockoff of each over HTTP, scored on the
    owner's test rows against the owner's file."""
    data, files, probas = owner
    shields = build_gateway({
        "audit_url": f"sqlite:///{tmp_path}/a.db", "tiers": {"t": {"max_batch": 500}},
        "models": [{"file": str(path), "name": name, "classes": ["a", "b", "c"],
                    "low": X.min(0).tolist(), "high": X.max(0).tolist()}
                   for name, path in files.items()]})
    key = shields[0].store.create_key("t")[0]
    rows = {}
    with live_app(create_app(shields)) as client:
        for name, path in files.items():
            r = client.post(f"/v1/models/{name}/predict", json={"inputs": X[TEST][:20].tolist()},
                            headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            want = probas[name](X[TEST][:20])
            assert np.allclose(r.json()["probabilities"], want, atol=1e-5), name
            out = tmp_path / f"{name}.json"
            res = runner.invoke(app, ["attack", "--target", str(client.base_url), "--api-key",
                                      key, "--model", name, "--model-file", str(path),
                                      "--data", str(data), "--attack", "knockoff", "--budget",
                                      "300", "--param", "source=pool", "--param",
                                      "student=forest", "--json", str(out)])
            assert res.exit_code == 0, (name, res.output)
            rows[name] = json.loads(out.read_text())
    for s in shields:
        s.close()
    for name, row in rows.items():
        assert row["status"] == "ok" and row["queries"] == 300, (name, row)
        assert row["test_rows"] == 400 and row["victim"] == name
        assert row["fidelity_test"] >= 0.85, (name, row["fidelity_test"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xgboost-booster", "lightgbm-booster", "onnx", "torchscript"])
def test_each_file_format_is_audited_from_the_cli(owner: Any, tmp_path: Path, name: str) -> None:
    """``modelshield audit`` on a model file: knockoff from the owner's pool against no
    defense and labels only, its fidelity scored on the owner's data."""
    data, files, _ = owner
    scenario = tmp_path / "audit.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": f"{name} owner", "target": {"file": str(files[name]), "data": str(data)},
        "attackers": [{"name": "knockoff", "attack": "knockoff",
                       "params": {"source": "pool", "student": "forest"}, "budgets": [200]}],
        "adaptive": False,
        "defenses": [{"name": "none"}, {"name": "labels", "policy": "label"}],
        "benign": {"accounts": 1, "archetypes": ["iid"]}}))
    res = runner.invoke(app, ["audit", str(scenario), "--out", str(tmp_path / "out"),
                              "--workers", "1"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    cells = [c for c in doc["cells"] if c["kind"] == "attack"]
    assert sorted(c["defense"] for c in cells) == ["labels", "none"], cells
    for cell in cells:
        assert cell["status"] == "ok" and cell["victim"] == name, cell
        assert cell["test_rows"] == 400 and cell["fidelity_test"] >= 0.8, cell
