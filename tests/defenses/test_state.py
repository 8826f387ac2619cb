"""Every detector-state back end behaves the same (memory, and a real Redis)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from modelshield.defenses.detectors import make_detector
from modelshield.defenses.state import DetectorState, state_from_url
from modelshield.errors import ConfigError
from modelshield.victims import Victim
from tests.servers import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest, redis_url: str) -> DetectorState:
    if request.param == "memory":
        return state_from_url("memory://")
    return state_from_url(redis_url)  # a fresh server per module; keys differ per test


def test_counters(state: DetectorState) -> None:
    assert state.incr("k-count", "a", 2) == 2
    assert state.incr_many("k-count", {"a": 3, "b": 1}) == {"a": 5, "b": 1}


def test_capped_rows_keep_the_latest_in_order(state: DetectorState) -> None:
    assert state.rows("k-rows", 3).shape == (0, 3)
    for i in range(10):
        state.push("k-rows", np.full((1, 3), float(i)), maxlen=4)
    np.testing.assert_array_equal(state.rows("k-rows", 3)[:, 0], [6, 7, 8, 9])
    state.push("k-rows2", np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(state.rows("k-rows2", 3), np.arange(6.0).reshape(2, 3))


def test_values_round_trip(state: DetectorState) -> None:
    assert state.get("k-val") is None
    state.set("k-val", {"detector": "sweep", "score": 1.5, "reason": "x"})
    assert state.get("k-val") == {"detector": "sweep", "score": 1.5, "reason": "x"}


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"storage\.limits"):
        state_from_url("mongodb://x")


def test_a_batch_reads_once_writes_once_and_loses_nothing(redis_url: str) -> None:
    """Inside ``batch`` the named keys come from one snapshot and the writes go in one
    pipeline at the end; what Redis holds afterwards is what unbatched calls leave."""
    import redis

    state = state_from_url(redis_url)
    state.incr("b-count", "a", 1)
    state.push("b-rows", np.zeros((2, 3)), maxlen=3)
    client = redis.Redis.from_url(redis_url)
    before = client.info("stats")["total_commands_processed"]
    with state.batch([("hash", "b-count"), ("rows", "b-rows"), ("value", "b-val")]):
        assert state.incr_many("b-count", {"a": 2, "b": 5}) == {"a": 3, "b": 5}
        state.push("b-rows", np.ones((2, 3)), maxlen=3)
        np.testing.assert_array_equal(state.rows("b-rows", 3)[:, 0], [0, 1, 1])
        assert state.get("b-val") is None
        state.set("b-val", [1, 2])
        assert state.get("b-val") == [1, 2]
        assert client.hget(state.prefix + "b-count", "b") is None  # not written yet
    # 3 reads + 2 HINCRBY + XADD + SET, plus the HGET and INFO above
    assert client.info("stats")["total_commands_processed"] - before == 3 + 4 + 2
    assert state.incr_many("b-count", {"a": 0, "b": 0}) == {"a": 3, "b": 5}
    np.testing.assert_array_equal(state.rows("b-rows", 3)[:, 0], [0, 1, 1])
    assert state.get("b-val") == [1, 2]


def test_writes_of_a_refused_batch_are_kept(redis_url: str) -> None:
    state = state_from_url(redis_url)
    with pytest.raises(RuntimeError), state.batch([("value", "r-flag")]):
        state.set("r-flag", {"detector": "sweep"})
        raise RuntimeError("deny")  # the Shield raises Denied after recording a flag
    assert state.get("r-flag") == {"detector": "sweep"}


def test_detectors_judge_the_same_batched_in_redis_as_in_memory(
        redis_url: str, victims: dict[str, Victim]) -> None:
    """Every detector, fed the same stream (natural rows, then a one-feature sweep), flags at
    the same query whether its state is in memory or in Redis behind one batch a request."""
    v = victims["digits-mlp"]
    rng = np.random.default_rng(0)
    natural = v.pool[rng.permutation(len(v.pool))[:120]]
    sweep = np.repeat(natural[:1], 120, axis=0)
    sweep[:, 10] = np.linspace(0, 16, 120)
    stream = np.concatenate([natural, sweep])
    redis_state = state_from_url(redis_url.replace("/0", "/5"))
    for name in ("sweep", "boundary", "ood", "prada", "volume"):
        params = {"max_rows": 150} if name == "volume" else {}
        mem = make_detector(name, state=state_from_url("memory://"), **params)
        red = make_detector(name, state=redis_state, **params)
        for det in (mem, red):
            det.calibrate(v.pool, v.model.predict)
        for start in range(0, len(stream), 3):
            x = stream[start:start + 3]
            pred = v.model.predict(x)
            want = mem.observe("acct", x, pred)
            with redis_state.batch(red.reads("acct", pred)):
                got = red.observe("acct", x, pred)
            assert (want is None) == (got is None), (name, start)
            if want is not None and got is not None:
                assert want.detector == got.detector and want.reason == got.reason


def test_counting_new_fields_is_one_atomic_step(state: DetectorState) -> None:
    """``count_new`` adds each field's amount and counts, in ``_n``, the fields seen for
    the first time: what ``fresh_rows`` needs, in one round trip on Redis."""
    counts, before = state.count_new("n-seen", {"a": 2, "b": 1})
    assert (counts, before) == ({"a": 2, "b": 1}, 0)
    counts, before = state.count_new("n-seen", {"b": 1, "c": 1})
    assert (counts, before) == ({"b": 2, "c": 1}, 2)  # a, b were new before; c is new now
    assert state.incr("n-seen", "_n", 0) == 3


def test_fresh_rows_take_one_round_trip(redis_url: str, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    import redis.connection

    from modelshield.defenses.detectors import fresh_rows

    state = state_from_url(redis_url.replace("/0", "/6"))
    rows = np.arange(12.0).reshape(4, 3)
    rows[3] = rows[0]
    state.get("warm")  # the connection is open
    sent: list[bytes] = []
    original = redis.connection.Connection.send_packed_command

    def counted(self: object, command: object, *a: object, **k: object) -> object:
        sent.append(b"".join(command) if isinstance(command, list) else command)  # type: ignore[arg-type]
        return original(self, command, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    assert fresh_rows(state, "acct", rows).tolist() == [True, True, True, False]
    assert fresh_rows(state, "acct", rows[1:3]).tolist() == [False, False]
    assert len(sent) == 2  # one round trip each


def test_a_worker_reads_only_the_rows_added_since_its_last_read(redis_url: str) -> None:
    """A worker keeps each row set it has read; its next read of the set fetches only the
    rows pushed since (by any worker), not the whole set: PRADA's sets are up to 2,000
    rows of 64 floats, about 1 MB, per class and account."""
    import redis

    writer, reader = state_from_url(redis_url), state_from_url(redis_url)
    rows = np.random.default_rng(1).random((2100, 64))
    for start in range(0, 2000, 100):
        writer.push("big-set", rows[start:start + 100], maxlen=2000)
    with reader.batch([("rows", "big-set")]):
        np.testing.assert_array_equal(reader.rows("big-set", 64), rows[:2000])
    client = redis.Redis.from_url(redis_url)
    for i in range(2000, 2100):
        writer.push("big-set", rows[i:i + 1], maxlen=2000)
        sent = client.info("stats")["total_net_output_bytes"]
        with reader.batch([("rows", "big-set")]):
            got = reader.rows("big-set", 64)
        np.testing.assert_array_equal(got, rows[i + 1 - 2000:i + 1])
        assert client.info("stats")["total_net_output_bytes"] - sent < 20_000


def test_two_workers_row_sets_match_memory_under_interleaved_writes(redis_url: str) -> None:
    """Two workers (two states, each with its own copy of the sets it read) push to the
    same capped sets in turn, in and out of batches; each reads exactly what one
    in-memory state fed the same pushes in the same order holds."""
    rng = np.random.default_rng(2)
    workers = [state_from_url(redis_url.replace("/0", "/7")) for _ in range(2)]
    memory = state_from_url("memory://")
    for step in range(300):
        key = f"w-set{step % 3}"
        w = workers[int(rng.integers(2))]
        rows = rng.random((int(rng.integers(1, 9)), 4))
        if rng.random() < 0.5:
            with w.batch([("rows", key)]):
                before = w.rows(key, 4)
                np.testing.assert_array_equal(before, memory.rows(key, 4))
                w.push(key, rows, maxlen=20)
                memory.push(key, rows, maxlen=20)
                np.testing.assert_array_equal(w.rows(key, 4), memory.rows(key, 4))
        else:
            w.push(key, rows, maxlen=20)
            memory.push(key, rows, maxlen=20)
        for other in workers:
            np.testing.assert_array_equal(other.rows(key, 4), memory.rows(key, 4))


def test_prada_flags_at_the_same_query_over_two_workers_as_in_memory(
        redis_url: str, victims: dict[str, Victim]) -> None:
    """One account's requests alternate between two workers sharing a Redis, each with
    its own copy of the sets: PRADA decides each request as one in-memory state does."""
    v = victims["digits-mlp"]
    rng = np.random.default_rng(3)
    natural = v.pool[rng.permutation(len(v.pool))[:150]]
    mixed = natural[:1] + rng.normal(0, 0.01, (300, natural.shape[1]))  # one row, jittered
    mixed[::5] = natural[:60]  # and a natural row in five: far from normal distances
    stream = np.concatenate([mixed, natural[60:]])
    shared = redis_url.replace("/0", "/8")
    mem = make_detector("prada", state=state_from_url("memory://"), max_set=8, every=5)
    mem.calibrate(v.pool, v.model.predict)
    workers = [make_detector("prada", state=state_from_url(shared), max_set=8, every=5)
               for _ in range(2)]
    for det in workers:
        det.delta = mem.delta  # type: ignore[attr-defined]  # calibrated once, the same threshold
    flagged = []
    for i, start in enumerate(range(0, len(stream), 2)):
        x = stream[start:start + 2]
        pred = v.model.predict(x)
        want = mem.observe("acct", x, pred)
        red = workers[i % 2]
        with red.state.batch(red.reads("acct", pred)):
            got = red.observe("acct", x, pred)
        assert (want is None) == (got is None), start
        if want is not None and got is not None:
            assert want.reason == got.reason
            flagged.append(start)
    assert flagged  # the synthetic queries are caught, on both sides alike
