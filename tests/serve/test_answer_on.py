"""Where the gateway runs a classifier's stages (``answer_on``): on the event loop for a
fast in-process model, on request threads otherwise; the answers, refusals, records and
flags are the same either way."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelshield.defenses.shield import Shield
from modelshield.errors import ConfigError
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield, load_config
from modelshield.store import AuditStore
from modelshield.victims import Victim

PATH = "/v1/models/digits-mlp/predict"


def _config(tmp: Path, answer_on: str = "auto") -> dict[str, Any]:
    return {"model": {"builtin": "digits-mlp"}, "audit_url": f"sqlite:///{tmp / 'a.db'}",
            "answer_on": answer_on,
            "tiers": {"pro": {"limits": {"requests": "1000/hour"}, "policy": "round:2",
                              "on_flag": "deny", "detect": "after",
                              "detectors": [{"volume": {"max_rows": 6}}]}}}


@pytest.mark.parametrize(("answer_on", "on_loop"), [("auto", True), ("loop", True),
                                                     ("threads", False)])
def test_a_fast_in_process_model_is_answered_on_the_loop(tmp_path: Path, answer_on: str,
                                                         on_loop: bool) -> None:
    shield = build_shield(_config(tmp_path, answer_on))
    assert shield.on_loop is on_loop
    shield.close()


def test_auto_leaves_a_slow_model_to_threads(tmp_path: Path,
                                             victims: dict[str, Victim]) -> None:
    victim = victims["digits-mlp"]

    class Slow:  # a model that takes 5 ms a call (a large network, say)
        def predict(self, x: np.ndarray) -> Any:
            time.sleep(0.005)
            return victim.predict(x)

    config = load_config(_config(tmp_path))
    shield = Shield(config, Slow(), victim.spec, AuditStore(config.audit_url),
                    benign=victim.X_test)
    assert not shield.on_loop
    shield.close()


def test_answer_on_is_checked_in_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="answer_on"):
        build_shield(_config(tmp_path, "sometimes"))
    upstream = _config(tmp_path, "loop")
    upstream["model"] = {"upstream": "http://127.0.0.1:9", "name": "m", "classes": ["a", "b"],
                         "n_features": 2, "low": 0.0, "high": 1.0}
    with pytest.raises(ConfigError, match="answer_on"):  # its calls wait on the network
        build_shield(upstream)


def test_auto_leaves_redis_state_to_threads(tmp_path: Path) -> None:
    from tests.servers import redis_server

    with redis_server() as url:
        config = _config(tmp_path)
        config["storage"] = {"limits": url}
        shield = build_shield(config)
        assert not shield.on_loop  # a round trip would hold up the loop
        shield.close()
        config["answer_on"] = "loop"  # the owner's choice, with Redis on the same host
        shield = build_shield(config)
        assert shield.on_loop
        shield.close()


def test_a_large_request_goes_to_a_thread(tmp_path: Path, victims: dict[str, Victim],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from modelshield.defenses.shield import LOOP_MAX_ROWS

    config = _config(tmp_path)
    config["tiers"]["pro"]["detectors"] = []  # no volume to reach
    shield = build_shield(config)
    key, _ = shield.store.create_key("pro")
    on_loop: list[int] = []
    handle = Shield.handle_on_loop

    async def counted(self: Shield, api_key: Any, inputs: Any, ip: str = "") -> Any:
        on_loop.append(len(inputs))
        return await handle(self, api_key, inputs, ip)

    monkeypatch.setattr(Shield, "handle_on_loop", counted)
    x = victims["digits-mlp"].X_test
    with TestClient(create_app(shield)) as client:
        for n in (1, LOOP_MAX_ROWS, LOOP_MAX_ROWS + 1):
            r = client.post(PATH, json={"inputs": x[:n].tolist()},
                            headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
    assert on_loop == [1, LOOP_MAX_ROWS]
    assert shield.store.count(answered=True) == 3
    shield.close()


def _session(client: TestClient, key: str, x: np.ndarray) -> list[tuple[int, Any]]:
    """Answers, a refusal of the Shield's, a keyless request, then a volume flag: the
    request that brings the account to six rows is answered and flags it (detection after
    the answer); the next ones are refused."""
    auth = {"Authorization": f"Bearer {key}"}
    out = []
    for body, headers in [({"inputs": x[:2].tolist()}, auth),
                          ({"inputs": [[99.0] * 64]}, auth),
                          ({"inputs": x[:1].tolist()}, {}),
                          ({"inputs": x[2:6].tolist()}, auth),
                          ({"inputs": x[6:7].tolist()}, auth),
                          ({"inputs": x[7:8].tolist()}, auth)]:
        r = client.post(PATH, json=body, headers=headers)
        out.append((r.status_code, r.json()))
    return out


def test_loop_and_threads_answer_alike(tmp_path: Path, victims: dict[str, Victim]) -> None:
    seen = {}
    for mode in ("loop", "threads"):
        (tmp_path / mode).mkdir()
        shield = build_shield(_config(tmp_path / mode, mode))
        key, _ = shield.store.create_key("pro", "tester")
        with TestClient(create_app(shield)) as client:
            session = _session(client, key, victims["digits-mlp"].X_test)
        shield.close()
        store = shield.store
        seen[mode] = (session, store.count(answered=True), store.count(answered=False),
                      [f["detector"] for f in store.flags()], store.verify().ok)
    assert seen["loop"] == seen["threads"]
    statuses = [status for status, _ in seen["loop"][0]]
    assert statuses == [200, 422, 401, 200, 403, 403]
    # refusals: the 422, the two 403s, and the address's summary of its keyless request
    assert seen["loop"][1:] == (2, 4, ["volume"], True)


def test_the_app_closes_its_shields_at_shutdown(tmp_path: Path, victims: dict[str, Victim],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """At shutdown the detection still pending runs and the stores close (the audit
    log's writer commits what is queued first)."""
    shield = build_shield(_config(tmp_path))
    key, _ = shield.store.create_key("pro")
    closed: list[Shield] = []
    close = Shield.close

    def counted(self: Shield) -> None:
        closed.append(self)
        close(self)

    monkeypatch.setattr(Shield, "close", counted)
    with TestClient(create_app(shield)) as client:
        r = client.post(PATH, json={"inputs": victims["digits-mlp"].X_test[:1].tolist()},
                        headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and closed == []
    assert closed == [shield] and shield.store._writer is None
    assert shield.store.count(answered=True) == 1
