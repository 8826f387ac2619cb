"""The gateway through the real app, with SQLite, a real Redis and a real PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from httpx import Client as HttpClient

from modelshield.attacks import ATTACKS
from modelshield.defenses.shield import Shield
from modelshield.errors import ConfigError, Denied
from modelshield.oracle import Blocked, ShieldOracle
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from modelshield.store import AuditRecord, AuditStore
from modelshield.victims import Victim
from tests.servers import live_app, postgres_server, redis_server


def config(tmp: Path, **tiers: dict[str, Any]) -> dict[str, Any]:
    return {"model": {"builtin": "digits-mlp"}, "audit_url": f"sqlite:///{tmp / 'audit.db'}",
            "tiers": tiers or {"pro": {"limits": {"requests": "1000/hour"}, "policy": "round:2",
                                       "max_batch": 50}}}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[HttpClient, Shield, str]]:
    shield = build_shield(config(tmp_path))
    key, _ = shield.store.create_key("pro", "tester")
    with live_app(create_app(shield)) as client:
        yield client, shield, key


def test_predict_returns_what_the_tier_allows_and_records_it(
        gateway: tuple[HttpClient, Shield, str], victims: dict[str, Victim]) -> None:
    client, shield, key = gateway
    x = victims["digits-mlp"].X_test[:3]
    r = client.post("/v1/models/digits-mlp/predict", json={"inputs": x.tolist()},
                    headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    body = r.json()
    assert body["labels"] == victims["digits-mlp"].predict_labels(x).tolist()
    assert body["policy"] == "round:decimals=2"
    assert all(round(p, 2) == p for row in body["probabilities"] for p in row)
    assert "RateLimit-Remaining" in r.headers
    assert shield.store.count() == 1 and shield.store.verify().ok


def test_open_inference_protocol_v2(gateway: tuple[HttpClient, Shield, str],
                                    victims: dict[str, Victim]) -> None:
    client, _, key = gateway
    x = victims["digits-mlp"].X_test[:2]
    r = client.post("/v2/models/digits-mlp/infer", headers={"X-API-Key": key}, json={
        "id": "r1", "inputs": [{"name": "input-0", "shape": [2, 64], "datatype": "FP64",
                                "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["label"]["data"] == victims["digits-mlp"].predict_labels(x).tolist()
    assert out["probabilities"]["shape"] == [2, 10]
    meta = client.get("/v2/models/digits-mlp", headers={"X-API-Key": key}).json()
    assert meta["inputs"][0]["shape"] == [-1, 64]
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert "modelshield_requests_total" in client.get("/metrics").text


@pytest.mark.parametrize(("body", "headers", "status", "code", "recorded"), [
    # Without a valid key: counted in the address's summary (written when its window ends).
    ({"inputs": [[1.0] * 64]}, {}, 401, "missing_key", False),
    ({"inputs": [[1.0] * 64]}, {"Authorization": "Bearer nope"}, 401, "invalid_key", False),
    ({"inputs": [[1.0] * 5]}, None, 422, "invalid_shape", True),
    ({"inputs": [[None] * 64]}, None, 422, "invalid_values", True),
    ({"inputs": [[1.0] * 63 + [17.0]]}, None, 422, "out_of_domain", True),
    ({"inputs": [[-1e308] * 64]}, None, 422, "out_of_domain", True),
    ({"inputs": [[1.0] * 64] * 51}, None, 413, "batch_too_large", True),
    # Bodies the gateway cannot read as a request never reach the Shield.
    ({"inputs": [["a"] * 64]}, None, 422, "invalid_request", False),
    ({"rows": []}, None, 422, "invalid_request", False),
])
def test_bad_requests_get_a_json_4xx_and_refusals_are_recorded_as_refusals(
        gateway: tuple[HttpClient, Shield, str], body: Any, headers: Any, status: int,
        code: str, recorded: bool) -> None:
    client, shield, key = gateway
    r = client.post("/v1/models/digits-mlp/predict", json=body,
                    headers={"Authorization": f"Bearer {key}"} if headers is None else headers)
    assert r.status_code == status and r.json()["error"]["code"] == code
    records = shield.store.records()
    assert len(records) == int(recorded)
    if recorded:
        decision = json.loads(records[0]["decision"])
        assert (decision["action"], decision["status"], decision["code"]) == \
            ("refuse", status, code)
        assert records[0]["answer"] == "null"  # nothing was answered
    assert shield.store.verify().ok


def test_infinity_malformed_json_and_unknown_model(gateway: tuple[HttpClient, Shield, str]) -> None:
    client, shield, key = gateway
    auth = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    r = client.post("/v1/models/digits-mlp/predict", headers=auth,
                    content='{"inputs": [[' + ",".join(["1e999"] * 64) + "]]}")
    assert r.status_code == 422
    r = client.post("/v1/models/digits-mlp/predict", headers=auth, content='{"inputs": [[1,')
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = client.post("/v1/models/other/predict", headers=auth, json={"inputs": [[1.0] * 64]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
    assert shield.store.count() == 1  # only the infinite row reached the Shield (a refusal)
    assert client.get("/v2/health/live").status_code == 200  # still up


def test_revoked_and_expired_keys_are_refused(tmp_path: Path) -> None:
    clock = [1000.0]
    shield = build_shield(config(tmp_path), clock=lambda: clock[0])
    shield.store.clock = lambda: clock[0]
    revoked, rec = shield.store.create_key("pro")
    shield.store.revoke(rec.key_id)
    short, _ = shield.store.create_key("pro", ttl_seconds=10)
    x = np.zeros((1, 64))
    with pytest.raises(Denied, match="revoked"):
        shield.handle(revoked, x)
    shield.handle(short, x)
    clock[0] += 11
    with pytest.raises(Denied, match="expired") as info:
        shield.handle(short, x)
    assert info.value.status == 403


def test_rate_limit_gives_429_with_retry_after(tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path, free={"limits": {"requests": "3/hour"}}))
    key, _ = shield.store.create_key("free")
    with live_app(create_app(shield)) as client:
        codes = [client.post("/v1/models/digits-mlp/predict", json={"inputs": [[0.0] * 64]},
                             headers={"Authorization": f"Bearer {key}"}) for _ in range(5)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
    assert int(codes[3].headers["Retry-After"]) > 0
    assert codes[3].headers["RateLimit-Remaining"] == "0"
    assert shield.store.count(answered=True) == 3 and shield.store.count(answered=False) == 2


def test_row_limits_count_rows_not_requests(tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path, free={"limits": {"rows": "10/hour"}}))
    key, _ = shield.store.create_key("free")
    shield.handle(key, np.zeros((8, 64)))
    with pytest.raises(Denied) as info:
        shield.handle(key, np.zeros((3, 64)))
    assert info.value.status == 429


def test_line_search_attack_is_flagged_and_denied(tmp_path: Path,
                                                  victims: dict[str, Victim]) -> None:
    cfg = config(tmp_path, free={"detectors": ["sweep"], "on_flag": "deny",
                                 "policy": "label"})
    cfg["model"] = {"builtin": "breast-cancer-lr"}
    shield = build_shield(cfg)
    key, _ = shield.store.create_key("free")
    oracle = ShieldOracle(shield, key)
    with pytest.raises(Blocked, match="403 extraction_suspected") as info:
        ATTACKS["label-only"]().run(oracle, 2000, pool=victims["breast-cancer-lr"].pool)
    assert info.value.used < 100  # Lowd-Meek needs ~450 queries on this victim


def test_degrade_switches_a_flagged_account_to_labels(tmp_path: Path,
                                                      victims: dict[str, Victim]) -> None:
    shield = build_shield(config(tmp_path, pro={
        "detectors": ["boundary"], "on_flag": "degrade", "policy": "full",
        "degrade_policy": "label"}))
    key, _ = shield.store.create_key("pro")
    oracle = ShieldOracle(shield, key)
    data = victims["digits-mlp"].pool
    first = oracle.query(data[:10])
    assert first.probabilities is not None
    # An MLP clone (no student choice): the flag and the switch are what this checks.
    e = ATTACKS["active"](rounds=4, student="mlp").run(oracle, 600, pool=data)
    assert e.queries == 600 and key not in shield.flagged  # flagged by key id, not secret
    assert shield.flagged, "uncertainty sampling should trip the boundary detector"
    assert oracle.query(data[:1]).probabilities is None


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    cases = [({"tiers": {"free": {"policy": "blur"}}}, "tiers.free.policy: Unknown output"),
             ({"tiers": {"free": {"limits": {"requests": "lots"}}}},
              "tiers.free.limits.requests: 'lots' is not a rate"),
             ({"tiers": {"free": {"on_flag": "shout"}}}, "tiers.free.on_flag"),
             ({"tiers": {"free": {"detectors": ["psychic"]}}}, "unknown detector 'psychic'"),
             ({"storage": {"limits": "mongodb://x"}}, "storage.limits"),
             ({"colour": "red"}, "colour: unknown field")]
    for data, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_shield(data)


# -- Redis ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def test_two_replicas_sharing_redis_admit_exactly_the_limit(tmp_path: Path,
                                                            redis_url: str) -> None:
    cfg = config(tmp_path, free={"limits": {"requests": "100/hour"}})
    cfg["storage"] = {"limits": redis_url}
    replicas = [build_shield(cfg, store=AuditStore(cfg["audit_url"])) for _ in range(2)]
    key, _ = replicas[0].store.create_key("free")
    x = np.zeros((1, 64))
    admitted = []
    lock = threading.Lock()

    def call(i: int) -> None:
        try:
            replicas[i % 2].handle(key, x)
        except Denied as exc:
            assert exc.status == 429
            return
        with lock:
            admitted.append(i)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(300)))
    assert len(admitted) == 100
    assert replicas[0].store.count(answered=True) == 100 and replicas[0].store.verify().ok


@pytest.mark.parametrize("fail", ["closed", "open"])
def test_unreachable_redis_fails_closed_by_default(tmp_path: Path, fail: str) -> None:
    from tests.servers import free_port

    cfg = config(tmp_path, free={"limits": {"requests": "10/hour"}})
    cfg["storage"] = {"limits": f"redis://127.0.0.1:{free_port()}/0", "fail": fail}
    shield = build_shield(cfg)
    key, _ = shield.store.create_key("free")
    if fail == "closed":
        with pytest.raises(Denied) as info:
            shield.handle(key, np.zeros((1, 64)))
        assert info.value.status == 503
    else:
        shield.handle(key, np.zeros((1, 64)))


def test_a_redis_that_stops_answering_is_a_503_not_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that takes connections and never replies: every Redis client the Shield
    opens gives up after its time-out, and the request is refused (fail closed)."""
    import socket
    import time

    from modelshield.defenses import state

    monkeypatch.setattr(state, "REDIS_TIMEOUT_SECONDS", 0.3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        cfg = config(tmp_path, free={"limits": {"requests": "10/hour"}})
        cfg["storage"] = {"limits": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"}
        shield = build_shield(cfg)
        key, _ = shield.store.create_key("free")
        start = time.monotonic()
        with pytest.raises(Denied) as info:
            shield.handle(key, np.zeros((1, 64)))
        assert info.value.status == 503 and info.value.code == "limits_unavailable"
        assert time.monotonic() - start < 5
        shield.close()


# -- PostgreSQL -------------------------------------------------------------------------------
def test_postgres_audit_log_keeps_one_chain_under_concurrent_writers() -> None:
    with postgres_server() as url:
        stores = [AuditStore(url, keys={"v1": "postgres-test-audit-key"}) for _ in range(2)]
        key, _ = stores[0].create_key("pro")
        assert stores[1].lookup(key) is not None

        def write(i: int) -> None:
            stores[i % 2].append([AuditRecord(float(i), "k", "ip", "m", 1, [[i]], {}, {})])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(200)))
        assert stores[0].count() == 200
        verdict = stores[1].verify()
        assert verdict.ok and verdict.checked == 201  # and the key's creation
        for s in stores:
            s.close()


def test_an_attack_split_over_many_keys_from_one_network_is_caught(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    from modelshield.oracle.base import BaseOracle

    cfg = config(tmp_path, free={"detectors": ["sweep"], "on_flag": "deny",
                                 "policy": "label", "group_by": "ip"})
    cfg["model"] = {"builtin": "breast-cancer-lr"}
    shield = build_shield(cfg)
    keys = [shield.store.create_key("free")[0] for _ in range(20)]

    class Rotating(BaseOracle):
        """Each key sends 30 queries (under any per-account minimum), from one /24."""

        def _answer(self, inputs: np.ndarray) -> Any:
            key = keys[(self.used // 30) % len(keys)]
            try:
                return shield.handle(key, inputs, f"10.0.0.{self.used // 30 % 250}")[0]
            except Denied as exc:
                raise Blocked(exc, self.used) from None

    with pytest.raises(Blocked, match="extraction_suspected") as info:
        ATTACKS["label-only"]().run(Rotating(shield.spec), 2000,
                                    pool=victims["breast-cancer-lr"].pool)
    assert info.value.used < 100
    # Without grouping, no single key sends enough to be judged.
    cfg["tiers"]["free"]["group_by"] = "none"
    cfg["audit_url"] = f"sqlite:///{tmp_path / 'b.db'}"
    shield = build_shield(cfg)
    keys[:] = [shield.store.create_key("free")[0] for _ in range(20)]
    e = ATTACKS["label-only"]().run(Rotating(shield.spec), 2000,
                                    pool=victims["breast-cancer-lr"].pool)
    assert e.queries > 400


def test_replicas_sharing_redis_share_detector_state_and_flags(
        tmp_path: Path, redis_url: str, victims: dict[str, Victim]) -> None:
    from modelshield.oracle.base import BaseOracle

    cfg = config(tmp_path, free={"detectors": ["sweep"], "on_flag": "deny",
                                 "policy": "label"})
    cfg["model"] = {"builtin": "breast-cancer-lr"}
    cfg["storage"] = {"limits": redis_url.replace("/0", "/3")}
    replicas = [build_shield(cfg, store=AuditStore(cfg["audit_url"])) for _ in range(2)]
    key, _ = replicas[0].store.create_key("free")

    class RoundRobin(BaseOracle):
        """A load balancer: batches alternate between the two replicas."""

        def _answer(self, inputs: np.ndarray) -> Any:
            try:
                return replicas[self.used % 2].handle(key, inputs)[0]
            except Denied as exc:
                raise Blocked(exc, self.used) from None

    with pytest.raises(Blocked, match="extraction_suspected") as info:
        ATTACKS["label-only"]().run(RoundRobin(replicas[0].spec), 2000,
                                    pool=victims["breast-cancer-lr"].pool)
    assert info.value.used < 100
    for replica in replicas:  # the flag raised on one replica is enforced by both
        with pytest.raises(Denied, match="Access suspended") as denied:
            replica.handle(key, victims["breast-cancer-lr"].X_test[:1])
        assert denied.value.code == "extraction_suspected"


def test_a_model_file_is_served_with_its_declared_contract(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    import joblib

    v = victims["breast-cancer-lr"]
    path = tmp_path / "cancer.joblib"
    joblib.dump(v.model.estimator, path)  # type: ignore[attr-defined]
    cfg = config(tmp_path)
    cfg["model"] = {"file": str(path), "classes": ["malignant", "benign"],
                    "low": v.spec.low.tolist(), "high": v.spec.high.tolist()}
    shield = build_shield(cfg)
    key, _ = shield.store.create_key("pro")
    with live_app(create_app(shield)) as client:
        meta = client.get("/v2/models/cancer", headers={"Authorization": f"Bearer {key}"}).json()
        assert meta["parameters"]["classes"] == ["malignant", "benign"]
        r = client.post("/v1/models/cancer/predict", json={"inputs": v.X_test[:4].tolist()},
                        headers={"Authorization": f"Bearer {key}"})
    assert r.json()["labels"] == v.predict_labels(v.X_test[:4]).tolist()
    bad = dict(cfg, model={"file": str(path), "classes": ["a", "b"], "low": 0.0, "high": 1.0})
    with pytest.raises(ConfigError, match="n_features"):
        build_shield(bad)


def test_the_gateway_can_front_an_upstream_v2_server(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    (tmp_path / "up").mkdir()
    upstream = build_shield(config(tmp_path / "up"))
    up_key, _ = upstream.store.create_key("pro")
    v = victims["digits-mlp"]

    class Open:  # the upstream stands for a plain model server: no key needed
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope = dict(scope, headers=[*scope["headers"],
                                             (b"authorization", f"Bearer {up_key}".encode())])
            await self.app(scope, receive, send)

    with live_app(Open(create_app(upstream))) as up:
        cfg = config(tmp_path)
        cfg["model"] = {"upstream": str(up.base_url), "name": "digits-mlp",
                        "classes": [str(i) for i in range(10)], "n_features": 64,
                        "low": 0.0, "high": 16.0}
        front = build_shield(cfg)
        assert not front.on_loop  # a model over the network: its calls wait, on threads
        key, _ = front.store.create_key("pro")
        answer, _ = front.handle(key, v.X_test[:3])
        front.close()
    assert answer.labels.tolist() == v.predict_labels(v.X_test[:3]).tolist()
    assert front.store.count() == 1 and upstream.store.count() == 1


def test_oversized_bodies_are_refused_before_parsing(tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path))
    key, _ = shield.store.create_key("pro")
    with live_app(create_app(shield, max_body_bytes=10_000)) as client:
        r = client.post("/v1/models/digits-mlp/predict", json={"inputs": [[0.0] * 64] * 200},
                        headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks() -> Any:  # no Content-Length: counted as it arrives
            yield b'{"inputs": ['
            for _ in range(300):
                yield b"[" + b",".join([b"0.0"] * 64) + b"],"
            yield b"[0]]}"

        r = client.post("/v1/models/digits-mlp/predict", content=chunks(),
                        headers={"Authorization": f"Bearer {key}",
                                 "content-type": "application/json"})
        assert r.status_code == 413
        assert client.get("/v2/health/ready").status_code == 200
    assert shield.store.count() == 0


def test_replicas_sharing_redis_count_records_once_and_flag_together(
        tmp_path: Path, redis_url: str, victims: dict[str, Victim]) -> None:
    """The record and repeat views the detectors count are kept in Redis too: rows a
    customer sends again through the other replica are not counted twice, edits of a
    record are not counted as records, and noise is refused by both replicas."""
    import redis

    v = victims["digits-mlp"]
    cfg = config(tmp_path, free={"detectors": ["sweep", "boundary", "ood"],
                                 "on_flag": "deny"})
    url = redis_url.replace("/0", "/4")
    cfg["storage"] = {"limits": url}
    replicas = [build_shield(cfg, store=AuditStore(cfg["audit_url"])) for _ in range(2)]
    key, record = replicas[0].store.create_key("free")
    rows = v.honest[:40]
    for i, row in enumerate(np.concatenate([rows, rows])):  # the table, then again
        replicas[i % 2].handle(key, row[None, :])
    edit = rows[0].copy()
    edit[5] = 16.0 - edit[5]
    replicas[0].handle(key, edit[None, :])
    client = redis.Redis.from_url(url)
    counts = {k.decode(): int(n) for k, n in client.hgetall(
        f"modelshield:det:ood:{record.key_id}").items()}
    assert counts["total"] == 40  # 80 rows sent, 40 distinct records, the edit not one
    assert client.llen(f"modelshield:det:recent:{record.key_id}") <= 64
    noise = np.random.default_rng(0).uniform(0, 16, (80, 64))
    with pytest.raises(Denied, match="ood detector"):
        replicas[1].handle(key, noise)
    with pytest.raises(Denied, match="Access suspended"):
        replicas[0].handle(key, rows[:1])
    for r in replicas:
        r.close()
