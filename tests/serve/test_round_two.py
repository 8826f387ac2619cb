"""The gateway's second outside test, its findings outside the language-model routes, each
reproduced as reported. Over real sockets (uvicorn on loopback) where the finding is about
the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from tests.cli import run_cli
from tests.servers import live_app

PREDICT = "/v1/models/digits-mlp/predict"
ROW = {"inputs": [[0.0] * 64]}


def config(tmp: Path, **extra: Any) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    return {"model": {"builtin": "digits-mlp"}, "audit_url": f"sqlite:///{tmp / 'audit.db'}",
            "tiers": {"pro": {"policy": "round:2", "max_batch": 50}}, **extra}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def write_config(tmp: Path, cfg: dict[str, Any]) -> Path:
    import yaml

    path = tmp / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- N13: forwarded addresses --------------------------------------------------------------
def test_a_forwarded_address_that_is_not_an_ip_is_refused_and_never_logged(
        tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path, trusted_proxies=["127.0.0.1"]))
    key, _ = shield.store.create_key("pro")
    with live_app(create_app(shield)) as client:
        r = client.post(PREDICT, json=ROW, headers={**auth(key),
                                                    "X-Forwarded-For": "[bold red]x[/"})
        ok = client.post(PREDICT, json=ROW, headers={**auth(key),
                                                     "X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "X-Forwarded-For"
    assert ok.status_code == 200
    assert {rec["client_ip"] for rec in shield.store.records()} == {"203.0.113.9"}
    shield.close()


def test_show_and_flags_print_markup_in_the_log_as_text(tmp_path: Path) -> None:
    """A record or a flag holding Rich markup (from an older gateway, or written into the
    database) is printed as it is, not read as markup."""
    from modelshield.store import AuditRecord

    cfg = config(tmp_path)
    shield = build_shield(cfg)
    shield.store.append([AuditRecord(1.0, None, "[bold red]x[/", "m", 0, None, None,
                                     {"action": "refuse", "status": 401, "code": "[/x]",
                                      "reason": "[link=evil]"})])
    shield.store.record_flag("ip:[/bold]", "[red]", 1.0, "[/]")
    shield.close()
    path = write_config(tmp_path, cfg)
    show = run_cli("audit-log", "show", "--config", str(path))
    flags = run_cli("audit-log", "flags", "--config", str(path))
    assert show.returncode == 0 and "[bold red]x[/" in show.stdout, show.stderr
    assert flags.returncode == 0 and "ip:[/bold]" in flags.stdout, flags.stderr


# -- N4/N5: suspensions that outlive a Redis flush, and a reinstatement that holds ----------
def _group_flagged(tmp_path: Path, url: str) -> tuple[Any, str, Any]:
    """A gateway on Redis whose tier watches keys by owner; the owner's group flagged."""
    from modelshield.defenses.detectors import Flag
    from modelshield.defenses.shield import Decision

    cfg = config(tmp_path, storage={"limits": url},
                 tiers={"pro": {"on_flag": "deny", "group_by": "owner", "max_batch": 50}})
    shield = build_shield(cfg)
    key, record = shield.store.create_key("pro", owner="acme")
    shield.record_flag("owner:acme", Flag("volume", 9.0, "too many rows"), Decision())
    return shield, key, record


def test_a_group_suspension_outlives_a_redis_flush(tmp_path: Path) -> None:
    import numpy as np
    import pytest
    import redis

    from modelshield.errors import Denied
    from tests.servers import redis_server

    with redis_server() as url:
        shield, key, _ = _group_flagged(tmp_path, url)
        redis.Redis.from_url(url).flushall()
        with pytest.raises(Denied) as info:
            shield.handle(key, np.zeros((1, 64)))
        assert info.value.status == 403 and info.value.code == "extraction_suspected"
        shield.close()


def test_reinstating_a_key_lifts_its_group_and_every_model_scope(tmp_path: Path) -> None:
    import numpy as np

    from modelshield.defenses.config import load_config
    from modelshield.defenses.state import state_from_url
    from modelshield.serve.admin import reinstate_key
    from tests.servers import redis_server

    with redis_server() as url:
        shield, key, record = _group_flagged(tmp_path, url)
        shield.store.record_flag(record.key_id, "sweep", 5.0, "a grid")
        # A model served under a name the config does not spell out (an unnamed `lm:`
        # directory, a file) keeps the key's flag under its own scope.
        state_from_url(url, "some-dir-name").set(f"flag:{record.key_id}", {
            "detector": "probing", "score": 1.0, "reason": "logit probing"})
        cfg = load_config(config(tmp_path, storage={"limits": url}, tiers={
            "pro": {"on_flag": "deny", "group_by": "owner"}}))
        lifted = reinstate_key(cfg, shield.store, record.key_id)
        assert set(lifted) == {record.key_id, "owner:acme"}
        assert state_from_url(url, "some-dir-name").get(f"flag:{record.key_id}") is None
        answer, _ = shield.handle(key, np.zeros((1, 64)))
        assert len(answer) == 1
        shield.close()


# -- N12: admin actions in the sealed chain ------------------------------------------------
def test_revocations_and_reinstatements_are_sealed_in_the_log(tmp_path: Path) -> None:
    from modelshield.store import AuditStore

    store = AuditStore(f"sqlite:///{tmp_path / 'a.db'}", keys={"v1": "k" * 32})
    _, key = store.create_key("pro")
    store.record_flag(key.key_id, "volume", 3.0, "too many rows")
    assert store.clear_flag(key.key_id) and store.revoke(key.key_id)
    ops = [json.loads(r["decision"]) for r in store.records(key_id=key.key_id, admin=True)]
    assert [(d["action"], d["op"]) for d in ops] == [
        ("admin", "create_key"), ("admin", "flag"), ("admin", "reinstate"), ("admin", "revoke")]
    assert ops[0]["tier"] == "pro" and ops[0]["terms_version"] == "1"
    assert store.verify().ok and store.verify().checked == 4
    assert store.count(answered=False) == 0  # an admin action is not a refused request
    assert store.count(admin=True) == 4 and store.records() == []
    store.close()


# -- N14: a model's metadata only to keys that may use it ----------------------------------
def test_model_metadata_is_shown_only_to_keys_whose_tier_the_model_offers(
        tmp_path: Path) -> None:
    from modelshield.serve.factory import build_gateway

    shields = build_gateway({
        "audit_url": f"sqlite:///{tmp_path / 'a.db'}",
        "models": [{"builtin": "digits-mlp", "name": "a", "tiers": {"ta": {}}},
                   {"builtin": "digits-lr", "name": "b", "tiers": {"tb": {}}}]})
    key_a, _ = shields[0].store.create_key("ta")
    with live_app(create_app(shields)) as client:
        mine = client.get("/v2/models/a", headers=auth(key_a))
        theirs = client.get("/v2/models/b", headers=auth(key_a))
        keyless = client.get("/v2/models/a")
        listed = client.get("/v2", headers=auth(key_a)).json()["models"]
        listed_keyless = client.get("/v2").json()["models"]
        account = client.get("/v1/account", params={"model": "b"}, headers=auth(key_a))
    assert mine.status_code == 200 and mine.json()["inputs"][0]["shape"] == [-1, 64]
    assert theirs.status_code == 403 and "shape" not in theirs.text
    assert keyless.status_code == 401
    assert listed == ["a"] and listed_keyless == []
    assert account.status_code == 403
    for s in shields:
        s.close()


# -- F9: what a refusal echoes -------------------------------------------------------------
def test_an_unknown_model_name_is_not_echoed_in_full(tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path))
    key, _ = shield.store.create_key("pro")
    with live_app(create_app(shield)) as client:
        r = client.post("/v1/models/" + "x" * 10_000 + "/predict", json=ROW, headers=auth(key))
    assert r.status_code == 404 and len(r.text) < 600, len(r.text)
    assert "10000 characters" in r.json()["error"]["message"]
    shield.close()


# -- N17: the refusal of an expired key ----------------------------------------------------
def test_an_expired_key_is_told_so_in_plain_words(tmp_path: Path) -> None:
    import numpy as np
    import pytest

    from modelshield.errors import Denied

    shield = build_shield(config(tmp_path))
    key, _ = shield.store.create_key("pro", ttl_seconds=-1)
    with pytest.raises(Denied) as info:
        shield.handle(key, np.zeros((1, 64)))
    assert str(info.value) == "The API key has expired." and info.value.code == "key_expired"
    shield.close()


# -- F8: the error bodies keep the gateway's own OpenAPI -----------------------------------
def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + \
            [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_in_the_openapi_document_resolves(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    shield = build_shield(config(tmp_path))
    with TestClient(create_app(shield)) as client:
        doc = client.get("/openapi.json").json()
    for ref in _refs(doc):
        _resolve(doc, ref)  # KeyError: unresolvable
    shield.close()


def test_v2_error_bodies_match_the_schema_the_openapi_document_declares(
        tmp_path: Path) -> None:
    import jsonschema
    from fastapi.testclient import TestClient

    shield = build_shield(config(tmp_path))
    key, _ = shield.store.create_key("pro")
    with TestClient(create_app(shield)) as client:
        doc = client.get("/openapi.json").json()
        sent = [client.post("/v2/models/digits-mlp/infer", content=b"{", headers=auth(key)),
                client.post("/v2/models/digits-mlp/infer", json={}),
                client.post("/v2/models/digits-mlp/infer", headers=auth(key), json={
                    "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64",
                                "data": [1, 2, 3]}]}),
                client.post("/v2/models/nothing/infer", headers=auth(key), json={
                    "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64",
                                "data": [0] * 64}]})]
    declared = doc["paths"]["/v2/models/{model}/infer"]["post"]["responses"]
    assert sorted(r.status_code for r in sent) == [400, 401, 404, 422]
    for r in sent:
        schema = declared[str(r.status_code)]["content"]["application/json"]["schema"]
        jsonschema.validate(r.json(), {**schema, "components": doc["components"]})
    shield.close()


# -- F8 and F11: the server's own refusals and deadlines -----------------------------------
class _Served:
    """The gateway under uvicorn with the gateway's own HTTP protocol (short deadlines)."""

    def __init__(self, app: Any, header: float = 1.0, body: float = 1.5) -> None:
        import threading

        import uvicorn

        from modelshield.serve.server import GatewayH11Protocol
        from tests.servers import free_port

        class Quick(GatewayH11Protocol):
            header_timeout = header
            body_timeout = body

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    http=Quick, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> int:
        from tests.servers import _wait_port

        self.thread.start()
        _wait_port(self.port)
        return self.port

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _exchange(port: int, data: bytes, wait: float = 5.0) -> tuple[bytes, float]:
    """Send ``data`` and read until the server closes: (what came back, seconds taken)."""
    import socket
    import time

    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        sock.sendall(data)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except TimeoutError:
            pass
    return got, time.monotonic() - start


def test_a_malformed_request_line_gets_a_json_400(tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path))
    with _Served(create_app(shield)) as port:
        got, _ = _exchange(port, b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"]["code"] == "malformed_http"
    shield.close()


def test_headers_and_bodies_that_stall_are_cut_off(tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path))
    key, _ = shield.store.create_key("pro")
    with _Served(create_app(shield)) as port:
        idle, idle_s = _exchange(port, b"")
        partial, partial_s = _exchange(port, b"POST " + PREDICT.encode() + b" HTTP/1.1\r\n")
        stalled, stalled_s = _exchange(port, (
            f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\"").encode())
    assert idle == b"" and idle_s < 4, idle_s
    assert partial == b"" and partial_s < 4, partial_s
    assert stalled_s < 4 and stalled.startswith(b"HTTP/1.1 408"), (stalled, stalled_s)
    assert json.loads(stalled.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    shield.close()


# -- N2: requests without a valid key ------------------------------------------------------
def test_keyless_and_bad_key_requests_leave_one_summary_per_address_and_window(
        tmp_path: Path) -> None:
    """50 requests from one address without a valid key (missing, then wrong): a missing
    key counts as a failure, the address is refused (429) from the 11th on, and the log
    gains one sealed summary for the address and window, not 50 records."""
    import numpy as np
    import pytest

    from modelshield.errors import Denied

    clock = [1_000.0]
    shield = build_shield(config(tmp_path, auth_failure_limits="10/minute"),
                          clock=lambda: clock[0])
    codes = []
    for i in range(50):
        with pytest.raises(Denied) as info:
            shield.handle(None if i % 2 else f"wrong-{i}", np.zeros((1, 64)), "198.51.100.7")
        codes.append(info.value.status)
    assert codes == [401] * 10 + [429] * 40
    assert shield.store.count() == 0  # nothing yet: the window is open
    clock[0] += 61
    with pytest.raises(Denied):
        shield.handle(None, np.zeros((1, 64)), "203.0.113.1")  # another address's window
    shield.auth_failures.flush(everything=False)
    [summary] = [json.loads(r["decision"]) for r in shield.store.records()
                 if r["client_ip"] == "198.51.100.7"]
    assert summary["code"] == "auth_failures" and summary["action"] == "refuse"
    assert summary["counts"] == {"missing_key": 5, "invalid_key": 5,
                                 "too_many_auth_failures": 40}
    shield.close()  # the open window of 203.0.113.1 is written on close
    again = build_shield(config(tmp_path))
    assert {r["client_ip"] for r in again.store.records()} == {"198.51.100.7", "203.0.113.1"}
    assert again.store.verify().ok
    again.close()


def test_an_address_past_its_failures_is_refused_before_any_key_lookup(
        tmp_path: Path) -> None:
    import numpy as np
    import pytest

    from modelshield.errors import Denied

    shield = build_shield(config(tmp_path, auth_failure_limits="3/minute"))
    looked: list[str] = []
    lookup = shield.store.lookup
    shield.store.lookup = lambda secret: (looked.append(secret), lookup(secret))[1]  # type: ignore[method-assign]
    for _ in range(3):
        with pytest.raises(Denied):
            shield.handle(None, np.zeros((1, 64)), "198.51.100.9")
    with pytest.raises(Denied) as info:
        shield.handle("a-key-never-looked-up", np.zeros((1, 64)), "198.51.100.9")
    assert info.value.status == 429 and looked == []
    shield.close()


def test_an_unknown_model_in_an_openai_body_is_not_echoed_in_full(tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path))
    key, _ = shield.store.create_key("pro")
    with live_app(create_app(shield)) as client:
        r = client.post("/v1/completions", headers=auth(key),
                        json={"model": "y" * 10_000, "prompt": "hi", "max_tokens": 1})
    assert r.status_code == 404 and len(r.text) < 600, len(r.text)
    shield.close()
