"""On Redis, the detectors' state costs two round trips a request: one that reads every
detector's state and counts the rows the account has not sent before (the ``seen:``
counters, in the same pipeline), and one that writes what they changed. Detection inline,
all five detectors, one request at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelshield.defenses.detectors import fresh_rows, seen_read
from modelshield.defenses.state import MemoryState, state_from_url
from modelshield.serve.factory import build_shield
from modelshield.victims import Victim
from tests.servers import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Any:
    with redis_server() as url:
        yield url


def _count_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import redis.connection

    sent: list[int] = []
    original = redis.connection.Connection.send_packed_command

    def counted(self: Any, command: Any, *a: Any, **k: Any) -> Any:
        sent.append(1)
        return original(self, command, *a, **k)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    return sent


def test_the_detect_stage_takes_two_round_trips(tmp_path: Path, redis_url: str,
                                                 victims: dict[str, Victim],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    x = victims["digits-mlp"].X_test
    shield = build_shield({
        "audit_url": f"sqlite:///{tmp_path}/a.db", "storage": {"limits": redis_url},
        "tiers": {"t": {"detectors": ["sweep", "boundary", "ood", "prada", "volume"],
                        "on_flag": "alert", "group_by": "ip"}}})
    key = shield.store.create_key("t")[0]
    detect = next(s for s in shield.stages if getattr(s, "name", "") == "detect")
    trips: list[int] = []
    original = type(detect).__call__

    def timed(self: Any, call: Any) -> None:
        sent = _count_trips(monkeypatch)
        original(self, call)
        trips.append(len(sent))
        monkeypatch.undo()

    for i in range(4):
        monkeypatch.setattr(type(detect), "__call__", timed)
        shield.handle(key, x[i:i + 1], client_ip="10.0.0.1")
    shield.close()
    assert trips[1:] == [2, 2, 2]  # the first request also loads the counting script


@pytest.mark.parametrize("batch", [[0], [0, 1, 1], [2, 0, 3, 3, 3]])
def test_fresh_rows_in_a_batch_match_memory(redis_url: str, batch: list[int]) -> None:
    """The counts read ahead with the batch give the same fresh rows as memory, request
    after request, repeats within and across requests included."""
    rng = np.random.default_rng(0)
    rows = rng.random((4, 8))
    redis_state, memory = state_from_url(redis_url, scope=f"fresh{batch}"), MemoryState()
    for _ in range(3):
        x = rows[batch]
        with redis_state.batch([seen_read("acct", x)]):
            got = fresh_rows(redis_state, "acct", x)
        assert got.tolist() == fresh_rows(memory, "acct", x).tolist()


def test_redis_replies_are_parsed_by_hiredis(redis_url: str) -> None:
    """redis-py's C parser (the ``hiredis`` extra): its pure-Python one spends about a
    fifth more CPU on each round trip of the detectors' pipelines."""
    state = state_from_url(redis_url, scope="parser")
    conn = state.client.connection_pool.get_connection()  # type: ignore[attr-defined]
    try:
        conn.connect()
        assert "Hiredis" in type(conn._parser).__name__
    finally:
        state.client.connection_pool.release(conn)  # type: ignore[attr-defined]
