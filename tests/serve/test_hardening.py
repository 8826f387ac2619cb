"""The red-team findings against the classifier gateway, each reproduced as it was reported:
the request, its size, the status it must get. Over real sockets (uvicorn on loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from httpx import Client as HttpClient
from typer.testing import CliRunner

from modelshield.cli import app as cli
from modelshield.defenses import parse_policy
from modelshield.defenses.detectors import Detector
from modelshield.defenses.limits_batch import RedisMovingWindowBatch
from modelshield.defenses.shield import Shield
from modelshield.errors import CheatingError, ConfigError, Denied
from modelshield.oracle import LocalOracle
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from modelshield.store.sql import KEY_CACHE_ENTRIES
from modelshield.victims import Victim
from tests.servers import live_app, redis_server

PREDICT = "/v1/models/digits-mlp/predict"


def config(tmp: Path, **extra: Any) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    return {"model": {"builtin": "digits-mlp"}, "audit_url": f"sqlite:///{tmp / 'audit.db'}",
            "tiers": {"pro": {"policy": "round:2", "max_batch": 50}}, **extra}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[HttpClient, Shield, str]]:
    shield = build_shield(config(tmp_path))
    key, _ = shield.store.create_key("pro")
    with live_app(create_app(shield)) as client:
        yield client, shield, key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- work and memory before authentication -------------------------------------------------------
def test_invalid_keys_are_cached_by_digest_in_a_bounded_cache(served: Any) -> None:
    client, shield, _ = served
    for i in range(40):
        r = client.post(PREDICT, json={"inputs": [[0.0] * 64]}, headers=auth(f"k{i}" + "x" * 200))
        assert r.status_code in (401, 429)
    cache = shield.store._key_cache
    assert cache and all(len(k) == 64 for k in cache)  # sha256 hex, never the secret
    for i in range(KEY_CACHE_ENTRIES + 50):
        shield.store.lookup(f"bad-{i}")
    assert len(shield.store._key_cache) == KEY_CACHE_ENTRIES


def test_a_15kb_key_is_refused_unread(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client, shield, _ = served
    looked: list[str] = []
    monkeypatch.setattr(shield.store, "lookup", lambda s: looked.append(s))
    r = client.post(PREDICT, json={"inputs": [[0.0] * 64]}, headers=auth("k" * 15_000))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"
    assert looked == []


def test_failed_authentication_is_rate_limited_per_address(tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path, auth_failure_limits="5/minute"))
    good, _ = shield.store.create_key("pro")
    x = np.zeros((1, 64))
    for i in range(5):
        with pytest.raises(Denied) as info:
            shield.handle(f"wrong-{i}", x, "198.51.100.7")
        assert info.value.status == 401
    with pytest.raises(Denied) as info:
        shield.handle("wrong-again", x, "198.51.100.7")
    assert info.value.status == 429 and info.value.code == "too_many_auth_failures"
    shield.handle(good, x, "198.51.100.8")  # another address is untouched


def test_a_keyless_request_is_refused_before_its_body_is_read(served: Any) -> None:
    client, shield, _ = served
    before = shield.store.count()
    # 6 MB of rows no one has parsed: the key is checked first.
    body = '{"inputs": [' + ",".join(["[" + ",".join(["1"] * 64) + "]"] * 45_000) + "]}"
    r = client.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_key"
    assert shield.store.count() == before  # counted in the address's summary, not one by one
    shield.auth_failures.flush(everything=True)
    [summary] = [json.loads(r["decision"]) for r in shield.store.records()[before:]]
    assert summary["code"] == "auth_failures" and summary["counts"] == {"missing_key": 1}


# -- answers that must be 4xx ---------------------------------------------------------------------
def test_an_integer_too_large_for_float64_in_v2_is_a_422(served: Any) -> None:
    client, _, key = served
    body = '{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": [' + \
        ",".join(["1" + "0" * 400] + ["0"] * 63) + "]}]}"
    r = client.post("/v2/models/digits-mlp/infer", content=body,
                    headers={**auth(key), "content-type": "application/json"})
    # Under /v2/ the error fields come flat: KServe v2 clients read "error" as a string.
    assert r.status_code == 422 and r.json()["param"] == "inputs"
    assert isinstance(r.json()["error"], str)


@pytest.mark.parametrize("value", [1e200, -1e308, 16.5, -0.1])
def test_the_declared_domain_is_enforced(served: Any, value: float) -> None:
    client, _, key = served
    r = client.post(PREDICT, json={"inputs": [[0.0] * 10 + [value] + [0.0] * 53]},
                    headers=auth(key))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "out_of_domain" and "inputs[0][10]" in err["message"]
    assert "[0, 16]" in err["message"]


def test_a_domain_declared_as_a_guide_is_not_enforced(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg["model"]["enforce_domain"] = False
    shield = build_shield(cfg)
    key, _ = shield.store.create_key("pro")
    answer, _ = shield.handle(key, np.full((1, 64), 17.0))
    assert len(answer) == 1


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/nowhere", 404, "not_found"),
    ("GET", PREDICT, 405, "method_not_allowed"),
    ("DELETE", "/v2/health/ready", 405, "method_not_allowed"),
])
def test_unknown_routes_and_methods_get_the_error_shape(served: Any, method: str, path: str,
                                                        status: int, code: str) -> None:
    client, _, _ = served
    r = client.request(method, path)
    assert r.status_code == status and "detail" not in r.json()
    if path.startswith("/v2/"):  # KServe v2: the same fields, flat, "error" the message
        assert set(r.json()) == {"error", "type", "param", "code"} and r.json()["code"] == code
    else:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert r.json()["error"]["code"] == code


@pytest.mark.parametrize("content", [b"[" * 100_000 + b"]" * 100_000,
                                     b'{"inputs": [[\xff\xfe]]}'])
def test_deep_json_and_invalid_utf8_get_a_json_400(served: Any, content: bytes) -> None:
    client, _, key = served
    r = client.post(PREDICT, content=content,
                    headers={**auth(key), "content-type": "application/json"})
    assert r.status_code in (400, 422) and "error" in r.json() and "detail" not in r.json()
    assert client.get("/v2/health/live").status_code == 200


def test_a_bug_is_a_json_500_counted_in_the_metrics(served: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    client, shield, key = served

    def broken(x: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(shield.model, "predict", broken)
    r = client.post(PREDICT, json={"inputs": [[0.0] * 64]}, headers=auth(key))
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert 'modelshield_requests_total{route="predict",status="500"} 1.0' in \
        client.get("/metrics").text


def test_the_openapi_documents_the_error_statuses(served: Any) -> None:
    client, _, _ = served
    doc = client.get("/openapi.json").json()
    responses = doc["paths"][PREDICT.replace("digits-mlp", "{model}")]["post"]["responses"]
    assert {"200", "401", "403", "413", "422", "429", "503"} <= set(responses)
    assert "ErrorBody" in json.dumps(responses["429"])


# -- defenses as strong as configured ------------------------------------------------------------
def test_per_ip_and_global_row_limits_charge_every_row(tmp_path: Path) -> None:
    for field in ("ip_limits", "global_limits"):
        shield = build_shield(config(tmp_path / field, **{field: {"rows": "10/hour"}}))
        key, _ = shield.store.create_key("pro")
        shield.handle(key, np.zeros((8, 64)))
        with pytest.raises(Denied) as info:
            shield.handle(key, np.zeros((4, 64)))
        assert info.value.status == 429, field


def test_noise_needs_a_secret_and_has_no_public_default(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSHIELD_NOISE_SECRET", raising=False)
    noisy = config(tmp_path, tiers={"ent": {"policy": "noise:0.05"}})
    with pytest.raises(ConfigError, match=r"noise_secret: tier 'ent' uses a keyed policy"):
        build_shield(noisy)
    with pytest.raises(ConfigError, match="noise_secret"):
        build_shield(config(tmp_path, tiers={"t": {"llm": {"logprob_noise": 0.1}}}))
    with pytest.raises(ConfigError, match=r"uses a keyed policy \(mad-argmax:eps=1\)"):
        build_shield(config(tmp_path, tiers={"t": {"degrade_policy": "mad-argmax:eps=1"}}))
    monkeypatch.setenv("MODELSHIELD_NOISE_SECRET", "s" * 32)
    build_shield(noisy).close()
    # Without a key, each policy object draws its own: no two agree, none is public.
    a, b = parse_policy("noise:0.05"), parse_policy("noise:0.05")
    assert a.key and b.key and a.key != b.key  # type: ignore[attr-defined]
    # `init` writes a config with a fresh random secret that loads.
    path = tmp_path / "gw.yaml"
    assert CliRunner().invoke(cli, ["init", str(path)]).exit_code == 0
    monkeypatch.delenv("MODELSHIELD_NOISE_SECRET")
    from modelshield.defenses.config import load_config

    assert len(load_config(path).noise_secret or "") >= 32


class _Buggy(Detector):  # no `name`: it stays out of the registry

    def observe(self, account: str, inputs: Any, prediction: Any) -> Any:
        raise ValueError("a detector bug")


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_a_detector_bug_is_neither_a_503_nor_silence(tmp_path: Path, fail: str) -> None:
    shield = build_shield(config(tmp_path, storage={"fail": fail}))
    key, _ = shield.store.create_key("pro")
    shield.detectors["pro"] = [_Buggy()]
    with pytest.raises(ValueError, match="a detector bug"):
        shield.handle(key, np.zeros((1, 64)))


def test_a_suspension_survives_a_restart_and_shows_in_the_cli(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victims: dict[str, Victim]) -> None:
    cfg = config(tmp_path, tiers={"watched": {"detectors": [{"volume": {"max_rows": 20}}],
                                              "on_flag": "deny"}})
    gw = tmp_path / "gw.yaml"
    import yaml

    gw.write_text(yaml.safe_dump(cfg))
    shield = build_shield(cfg)
    key, rec = shield.store.create_key("watched")
    x = victims["digits-mlp"].X_test[:10]
    shield.handle(key, x)
    with pytest.raises(Denied) as info:
        shield.handle(key, np.concatenate([x, x, x]))
    assert info.value.code == "extraction_suspected"
    shield.close()
    restarted = build_shield(cfg)  # memory:// state starts empty
    with pytest.raises(Denied) as info:
        restarted.handle(key, x[:1])
    assert info.value.code == "extraction_suspected"
    decisions = [json.loads(r["decision"]) for r in restarted.store.records(admin=True)
                 if r["answer"] == "null"]
    assert [d["code"] for d in decisions if d["action"] == "refuse"] == \
        ["extraction_suspected"] * 2
    assert [(d["op"], d["target"]) for d in decisions if d["action"] == "admin"] == \
        [("create_key", rec.key_id), ("flag", rec.key_id)]  # sealed in the log
    restarted.close()
    runner = CliRunner()
    out = runner.invoke(cli, ["keys", "list", "--config", str(gw)])
    assert "suspended (volume)" in out.stdout
    out = runner.invoke(cli, ["audit-log", "flags", "--config", str(gw)])
    assert rec.key_id in out.stdout and "volume" in out.stdout
    out = runner.invoke(cli, ["audit-log", "show", "--key", rec.key_id, "--config", str(gw)])
    assert out.stdout.count("extraction_suspected") == 2
    assert runner.invoke(cli, ["keys", "reinstate", rec.key_id, "--config",
                               str(gw)]).exit_code == 0
    again = build_shield(cfg)
    again.handle(key, x[:1])  # reinstated
    again.close()


def test_a_suspension_in_redis_survives_a_redis_without_persistence(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    x = victims["digits-mlp"].X_test[:10]
    with redis_server() as url:
        cfg = config(tmp_path, storage={"limits": url},
                     tiers={"w": {"detectors": [{"volume": {"max_rows": 5}}], "on_flag": "deny"}})
        shield = build_shield(cfg)
        key, _ = shield.store.create_key("w")
        with pytest.raises(Denied):
            shield.handle(key, x)
        import redis

        redis.Redis.from_url(url).flushall()  # the state store forgets everything
        shield.store._key_cache.clear()
        with pytest.raises(Denied) as info:
            shield.handle(key, x[:1])
        assert info.value.code == "extraction_suspected"
        shield.close()


def test_behind_a_trusted_proxy_the_forwarded_client_is_limited(tmp_path: Path) -> None:
    for trusted, expect in (([], [200, 200, 429]), (["127.0.0.1"], [200, 200, 200])):
        shield = build_shield(config(tmp_path / str(len(trusted)),
                                           ip_limits={"requests": "2/hour"},
                                           trusted_proxies=trusted))
        key, _ = shield.store.create_key("pro")
        with live_app(create_app(shield)) as client:
            codes = [client.post(PREDICT, json={"inputs": [[0.0] * 64]}, headers={
                **auth(key), "X-Forwarded-For": f"203.0.113.{i}"}).status_code
                for i in (1, 1, 2)]
        assert codes == expect, trusted
        shield.close()


def test_trusted_proxies_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trusted_proxies.*not an IP address"):
        build_shield(config(tmp_path, trusted_proxies=["the-balancer"]))


def test_the_oracle_guard_cannot_be_stepped_around(victims: dict[str, Victim]) -> None:
    oracle = LocalOracle(victims["digits-lr"])
    with pytest.raises(CheatingError):
        oracle._victim._target  # noqa: B018
    with pytest.raises(CheatingError):
        oracle._victim.model  # noqa: B018
    assert len(oracle.query(victims["digits-lr"].X_test[:2])) == 2  # the query path works


def test_redis_limits_take_one_round_trip_and_decide_as_before(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    import redis.connection

    x = victims["digits-mlp"].X_test
    with redis_server() as url:
        shield = build_shield(config(tmp_path, storage={"limits": url},
                                     global_limits={"requests": "1000/minute"},
                                     ip_limits={"requests": "1000/minute", "rows": "1000/minute"},
                                     tiers={"t": {"limits": {"requests": "3/hour",
                                                             "rows": "100/hour"}}}))
        assert isinstance(shield.charge, RedisMovingWindowBatch)
        key, _ = shield.store.create_key("t")
        sent: list[bytes] = []
        original = redis.connection.Connection.send_packed_command

        def counted(self: Any, command: Any, *a: Any, **k: Any) -> Any:
            sent.append(b"".join(command) if isinstance(command, list) else command)
            return original(self, command, *a, **k)

        shield.handle(key, x[:1])  # connections open
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(redis.connection.Connection, "send_packed_command", counted)
            _, decision = shield.handle(key, x[1:2])
        # Five limits with their windows' state in one script call, then the state store's
        # read of the account's flag: two round trips.
        assert [b"EVALSHA" in c for c in sent] == [True, False]
        assert sent[0].count(b"EVALSHA") == 1
        assert decision.headers["RateLimit-Remaining"] == "1"
        shield.handle(key, x[2:3])
        with pytest.raises(Denied) as info:
            shield.handle(key, x[3:4])
        assert info.value.status == 429 and int(info.value.headers["Retry-After"]) > 0
        shield.close()
