"""The predict route's fast path answers exactly as the route does, and only what it is
sure of: every other body goes to the route, which words the refusal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelshield.serve.app import create_app
from modelshield.serve.context import Gateway
from modelshield.serve.factory import build_shield
from modelshield.serve.fastpath import rows_of

PATH = "/v1/models/digits-mlp/predict"
ROW = [float(v) for v in np.arange(64) % 16]


def _config(tmp: Path) -> dict[str, Any]:
    return {"model": {"builtin": "digits-mlp"}, "audit_url": f"sqlite:///{tmp / 'audit.db'}",
            "tiers": {"pro": {"limits": {"requests": "1000/hour"}, "policy": "round:2",
                              "max_batch": 50, "detectors": ["volume"]}}}


@pytest.fixture
def both(tmp_path: Path) -> Iterator[dict[str, tuple[TestClient, str]]]:
    """Two gateways of the same config, with the fast path and without."""
    out = {}
    for name, fast in (("fast", True), ("route", False)):
        (tmp_path / name).mkdir()
        shield = build_shield(_config(tmp_path / name))
        key, _ = shield.store.create_key("pro", "tester")
        out[name] = (TestClient(create_app(shield, fast_path=fast)), key)
    yield out
    for client, _ in out.values():
        client.close()


BODIES: list[tuple[str, bytes, str]] = [
    ("three rows", json.dumps({"inputs": [ROW, ROW[::-1], [0.0] * 64]}).encode(),
     "application/json"),
    ("integers and a null", json.dumps({"inputs": [[int(v) for v in ROW[:63]] + [None]]}).encode(),
     "application/json"),
    ("NaN token", b'{"inputs": [[' + b", ".join([b"NaN"] + [b"1"] * 63) + b"]]}",
     "application/json"),
    ("out of domain", json.dumps({"inputs": [[99.0] * 64]}).encode(), "application/json"),
    ("wrong width", json.dumps({"inputs": [[1.0] * 5]}).encode(), "application/json"),
    ("charset", json.dumps({"inputs": [ROW]}).encode(), "application/json; charset=utf-8"),
    # What the fast path leaves to the route:
    ("empty", b'{"inputs": []}', "application/json"),
    ("strings", json.dumps({"inputs": [["1.5"] * 64]}).encode(), "application/json"),
    ("booleans", json.dumps({"inputs": [[True] * 64]}).encode(), "application/json"),
    ("extra field", json.dumps({"inputs": [ROW], "id": 3}).encode(), "application/json"),
    ("ragged", json.dumps({"inputs": [ROW, ROW[:10]]}).encode(), "application/json"),
    ("not an object", json.dumps([ROW]).encode(), "application/json"),
    ("malformed", b'{"inputs": [[1, 2', "application/json"),
    ("huge integer", b'{"inputs": [[' + b"1" * 400 + b"]]}", "application/json"),
    ("text", json.dumps({"inputs": [ROW]}).encode(), "text/plain"),
]


@pytest.mark.parametrize(("body", "kind"), [b[1:] for b in BODIES], ids=[b[0] for b in BODIES])
def test_the_fast_path_answers_as_the_route_does(both: dict[str, tuple[TestClient, str]],
                                                  body: bytes, kind: str) -> None:
    seen = {}
    for name, (client, key) in both.items():
        r = client.post(PATH, content=body, headers={"Authorization": f"Bearer {key}",
                                                     "Content-Type": kind})
        headers = {k: v for k, v in r.headers.items() if k not in ("date", "ratelimit-reset")}
        seen[name] = (r.status_code, r.content, headers)
    assert seen["fast"] == seen["route"]


def test_only_bodies_it_is_sure_of_skip_the_route(
        both: dict[str, tuple[TestClient, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    routed: list[str] = []
    classify = Gateway.classify

    async def counted(self: Gateway, request: Any, model: str, inputs: Any) -> Any:
        routed.append(model)
        return await classify(self, request, model, inputs)

    monkeypatch.setattr(Gateway, "classify", counted)
    client, key = both["fast"]
    auth = {"Authorization": f"Bearer {key}"}
    assert client.post(PATH, json={"inputs": [ROW]}, headers=auth).status_code == 200
    assert routed == []
    r = client.post(PATH, json={"inputs": [ROW], "note": "kept by the route"}, headers=auth)
    assert r.status_code == 200 and routed == ["digits-mlp"]
    metrics = client.get("/metrics", headers=auth).text
    assert 'modelshield_requests_total{route="predict",status="200"} 2.0' in metrics


def test_refusals_on_the_fast_path_are_counted_and_recorded(tmp_path: Path) -> None:
    shield = build_shield(_config(tmp_path))
    key, _ = shield.store.create_key("pro", "tester")
    with TestClient(create_app(shield)) as client:
        r = client.post(PATH, json={"inputs": [[99.0] * 64]},
                        headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "out_of_domain"
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).text
    assert 'modelshield_requests_total{route="predict",status="422"} 1.0' in metrics
    assert shield.store.count(answered=False) == 1 and shield.store.count(answered=True) == 0


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": PATH, "raw_path": PATH.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
            "headers": [(b"content-type", b"application/json"), *headers]}


def _call(app: Any, scope: dict[str, Any], receive: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_a_keyless_request_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    app = create_app(build_shield(_config(tmp_path)))

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read before the key was checked")

    sent = _call(app, _scope([(b"content-length", b"1000")]), receive)
    assert sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["error"]["code"] == "missing_key"


def test_a_second_key_header_names_no_other_account(tmp_path: Path) -> None:
    """With two ``Authorization`` headers, the key check, the fast path and the route all
    take the first: the same tier answers either way."""
    seen = {}
    for fast in (True, False):
        (tmp_path / str(fast)).mkdir()
        config = _config(tmp_path / str(fast))
        config["tiers"]["free"] = {"policy": "label"}
        shield = build_shield(config)
        pro, _ = shield.store.create_key("pro")
        free, _ = shield.store.create_key("free")
        with TestClient(create_app(shield, fast_path=fast)) as client:
            r = client.post(PATH, json={"inputs": [ROW]}, headers=[
                ("Authorization", f"Bearer {pro}"), ("Authorization", f"Bearer {free}")])
        seen[fast] = (r.status_code, r.json())
    assert seen[True] == seen[False]
    assert seen[True][0] == 200 and "probabilities" in seen[True][1]  # the pro tier's


@pytest.mark.parametrize("fast", [True, False])
def test_a_client_that_leaves_mid_body_is_counted_not_answered(tmp_path: Path,
                                                               fast: bool) -> None:
    shield = build_shield(_config(tmp_path))
    key, _ = shield.store.create_key("pro", "tester")
    app = create_app(shield, fast_path=fast)
    messages = iter([{"type": "http.request", "body": b'{"inputs": [[1', "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    sent = _call(app, _scope([(b"authorization", f"Bearer {key}".encode())]), receive)
    assert all(m.get("status", 408) == 408 for m in sent) and shield.store.count() == 0
    assert 'route="predict",status="408"' in app.state.gateway.metrics.text()


@pytest.mark.parametrize(("body", "taken"), [
    (b'{"inputs": [[1, 2.5, null]]}', True),
    (b'{"inputs": [[1e308, -1e308]]}', True),
    (b'{"inputs": [[1, 2], [3]]}', False),
    (b'{"inputs": [[]]}', False),
    (b'{"inputs": [1, 2]}', False),
    (b'{"inputs": [[1, "2"]]}', False),
    (b'{"inputs": [[1, false]]}', False),
    (b'{"inputs": [[[1]]]}', False),
    (b'{"rows": [[1]]}', False),
    (b'[' * 100_000, False),
    (b"\xff\xfe", False),
])
def test_rows_of_takes_only_plain_numeric_rows(body: bytes, taken: bool) -> None:
    rows = rows_of(body)
    assert (rows is not None) == taken
    if rows is not None:
        assert rows.dtype == np.float64 and rows.ndim == 2
