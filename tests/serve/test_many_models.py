"""Many models behind one gateway: an owner's own scikit-learn pipeline served from a file
beside a built-in model, each with its routes, tiers, limits and detectors, over real
sockets; and the owner's model copied over HTTP by an attack that names it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from httpx import Client as HttpClient
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelshield.attacks import ATTACKS
from modelshield.defenses.shield import Shield
from modelshield.errors import ConfigError
from modelshield.oracle.http import HttpOracle
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_gateway
from tests.servers import live_app


@pytest.fixture(scope="module")
def owner_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, Any]:
    """A pipeline the owner trained, saved as a file (not one of the built-in victims)."""
    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(7)
    idx = rng.permutation(len(X))
    train, test = idx[:400], idx[400:]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    model.fit(X[train], y[train])
    path = tmp_path_factory.mktemp("owner") / "credit.joblib"
    joblib.dump(model, path)
    return path, X[test], model


def config(tmp: Path, model_file: Path, X: np.ndarray) -> dict[str, Any]:
    return {
        "audit_url": f"sqlite:///{tmp}/audit.db",
        "models": [
            {"file": str(model_file), "name": "credit", "classes": ["malignant", "benign"],
             "low": (X.min(0) * 0.5).tolist(), "high": (X.max(0) * 1.5).tolist(),
             "tiers": {"gold": {"limits": {"requests": "3/hour"}, "policy": "full"},
                       "open": {"policy": "full"}}},
            {"builtin": "digits-lr", "name": "digits"},
        ],
        "tiers": {"gold": {"limits": {"requests": "5/hour"}}, "pro": {"policy": "round:2"}},
    }


@pytest.fixture
def gateway(tmp_path: Path, owner_model: Any) -> Iterator[tuple[HttpClient, list[Shield]]]:
    path, X, _ = owner_model
    shields = build_gateway(config(tmp_path, path, X))
    with live_app(create_app(shields)) as client:
        yield client, shields
    for s in shields:
        s.close()


def post(client: HttpClient, model: str, key: str, rows: Any) -> Any:
    return client.post(f"/v1/models/{model}/predict", json={"inputs": np.asarray(rows).tolist()},
                       headers={"Authorization": f"Bearer {key}"})


def test_each_model_has_its_routes_and_metadata(gateway: Any, owner_model: Any) -> None:
    client, shields = gateway
    _, X, model = owner_model
    key = shields[0].store.create_key("gold")[0]
    keyed = {"Authorization": f"Bearer {key}"}
    assert client.get("/v2", headers=keyed).json()["models"] == ["credit", "digits"]
    assert client.get("/v2/models/credit", headers=keyed).json()["inputs"][0]["shape"] == [-1, 30]
    assert client.get("/v2/models/digits", headers=keyed).json()["inputs"][0]["shape"] == [-1, 64]
    r = post(client, "credit", key, X[:4])
    assert r.status_code == 200 and r.json()["labels"] == model.predict(X[:4]).tolist()
    r = client.post("/v2/models/credit/infer", headers={"X-API-Key": key}, json={
        "inputs": [{"name": "x", "shape": [2, 30], "datatype": "FP64",
                    "data": X[:2].ravel().tolist()}]})
    assert r.status_code == 200 and r.json()["model_name"] == "credit"
    r = post(client, "fraud", key, X[:1])
    assert r.status_code == 404 and "'credit', 'digits'" in r.json()["error"]["message"]


def test_tiers_and_limits_are_per_model(gateway: Any, owner_model: Any) -> None:
    client, shields = gateway
    _, X, _ = owner_model
    gold = shields[0].store.create_key("gold")[0]
    # credit's own gold tier allows 3 requests an hour; the shared gold tier (digits) 5.
    assert [post(client, "credit", gold, X[:1]).status_code for _ in range(4)] == \
        [200, 200, 200, 429]
    assert [post(client, "digits", gold, np.zeros((1, 64))).status_code
            for _ in range(6)] == [200] * 5 + [429]
    # pro is a shared tier; credit has tiers of its own, without pro.
    pro = shields[0].store.create_key("pro")[0]
    r = post(client, "credit", pro, X[:1])
    assert r.status_code == 403 and r.json()["error"]["code"] == "unknown_tier"
    assert post(client, "digits", pro, np.zeros((1, 64))).status_code == 200
    assert client.get("/v1/account", params={"model": "credit"},
                      headers={"Authorization": f"Bearer {gold}"}).json()["policy"] == "full"


def test_the_owner_model_is_copied_exactly_over_http(gateway: Any, owner_model: Any) -> None:
    client, shields = gateway
    _, X, model = owner_model
    key = shields[0].store.create_key("open")[0]
    oracle = HttpOracle(str(client.base_url), key, model="credit", client=client)
    extraction = ATTACKS["equation-solving"](random_state=0).run(oracle, 200)
    agree = (extraction.clone.predict(X) == model.predict(X)).mean()
    assert agree == 1.0 and oracle.used <= 40  # d + 1 = 31 queries, and a check


def test_two_models_of_one_name_are_refused(tmp_path: Path, owner_model: Any) -> None:
    path, X, _ = owner_model
    cfg = config(tmp_path, path, X)
    cfg["models"][1]["name"] = "credit"
    with pytest.raises(ConfigError, match=r"models: more than one model is named 'credit'"):
        build_gateway(cfg)
    cfg["models"][1] = {"file": str(path), "name": "x"}
    with pytest.raises(ConfigError, match=r"models\[1\]: model: a model file or upstream needs"):
        build_gateway(cfg)


def test_a_language_model_and_a_classifier_behind_one_gateway(tmp_path: Path) -> None:
    shields = build_gateway({"audit_url": f"sqlite:///{tmp_path}/a.db",
                             "models": [{"builtin": "digits-lr", "name": "digits"},
                                        {"lm": "lm-tiny"}],
                             "tiers": {"t": {}}})
    key = shields[0].store.create_key("t")[0]
    auth = {"Authorization": f"Bearer {key}"}
    with live_app(create_app(shields)) as client:
        assert [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]] == \
            ["lm-tiny"]
        r = client.post("/v1/completions", headers=auth,
                        json={"model": "lm-tiny", "prompt": "import", "max_tokens": 3})
        assert r.status_code == 200 and len(r.json()["choices"]) == 1
        r = client.post("/v1/completions", headers=auth,
                        json={"model": "digits", "prompt": "x", "max_tokens": 1})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        assert post(client, "digits", key, np.zeros((1, 64))).status_code == 200
        r = post(client, "lm-tiny", key, np.zeros((1, 1)))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_a_classifier"
    for s in shields:
        s.close()
