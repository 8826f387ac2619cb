"""Detection off the request path (a tier's ``detect: after``): the classifier's detectors
watch a request once its answer is ready, outside the request; a flag they raise takes
effect from the account's next request on (the window: one request). The suspension check
of the current request stays on its path."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelshield.defenses.detectors import Flag
from modelshield.defenses.shield import Shield
from modelshield.errors import Denied
from modelshield.serve.factory import build_shield
from modelshield.victims import Victim


def _shield(tmp_path: Path, detect: str, on_flag: str = "deny") -> Shield:
    return build_shield({
        "audit_url": f"sqlite:///{tmp_path}/a.db",
        "tiers": {"t": {"detectors": [{"volume": {"max_rows": 3}}], "on_flag": on_flag,
                        "detect": detect}}})


def _statuses(shield: Shield, key: str, x: np.ndarray, n: int, on_loop: bool = False
              ) -> list[int]:
    """One row a request, on a request thread (``handle``) or on an event loop."""
    async def main() -> list[int]:
        out = []
        for i in range(n):
            try:
                if on_loop:
                    await shield.handle_on_loop(key, x[i:i + 1])
                else:
                    shield.handle(key, x[i:i + 1])
                out.append(200)
            except Denied as exc:
                out.append(exc.status)
        return out

    return asyncio.run(main())


@pytest.mark.parametrize(("detect", "expected"), [
    ("inline", [200, 200, 403, 403, 403]),  # the third row reaches the volume: refused
    ("after", [200, 200, 200, 403, 403])])  # the third is answered; the fourth is refused
@pytest.mark.parametrize("on_loop", [False, True])
def test_a_flag_takes_effect_within_one_request(tmp_path: Path, detect: str,
                                                expected: list[int], on_loop: bool,
                                                victims: dict[str, Victim]) -> None:
    shield = _shield(tmp_path, detect)
    key, record = shield.store.create_key("t")
    assert _statuses(shield, key, victims["digits-mlp"].X_test, 5, on_loop) == expected
    assert [f["ident"] for f in shield.store.flags()] == [record.key_id]  # durable either way
    assert shield.store.count(answered=True) == expected.count(200)
    assert shield.store.count(answered=False) == expected.count(403)
    shield.close()


class _Gate:
    """A detector that waits for the test's word before it looks: were it on the request's
    path, the request would wait too."""

    name = "gate"
    kind = "classifier"
    sees = "all"
    needs_calibration = False

    def __init__(self) -> None:
        self.open = threading.Event()
        self.seen: list[int] = []

    def reads(self, ident: str, prediction: Any) -> list[Any]:
        return []

    def observe(self, ident: str, x: np.ndarray, prediction: Any) -> Flag | None:
        if not self.open.wait(10):
            raise RuntimeError("the gate was never opened")
        self.seen.append(len(x))
        return Flag("gate", 1.0, "opened") if len(self.seen) >= 2 else None


def test_the_answer_does_not_wait_for_the_detectors(tmp_path: Path,
                                                    victims: dict[str, Victim]) -> None:
    shield = _shield(tmp_path, "after")
    gate = _Gate()
    shield.detectors["t"] = [gate]  # type: ignore[list-item]
    key, _ = shield.store.create_key("t")
    x = victims["digits-mlp"].X_test
    answer, _ = shield.handle(key, x[:2])  # answered while the detector is held
    assert len(answer.labels) == 2 and gate.seen == []
    gate.open.set()
    shield.handle(key, x[2:3])  # waits for the first request's detection, then is seen
    with pytest.raises(Denied) as refused:  # the second request's detection flagged
        shield.handle(key, x[3:4])
    assert refused.value.status == 403 and gate.seen == [2, 1]
    shield.close()


def test_detect_is_checked_in_the_config(tmp_path: Path) -> None:
    from modelshield.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="detect"):
        _shield(tmp_path, "later")


def test_on_redis_the_request_path_takes_one_round_trip(
        tmp_path: Path, victims: dict[str, Victim], monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits and the suspension flags in one script call; the detectors' reads and writes
    happen after the answer, off the request's thread. A flag set in Redis is seen."""
    import redis.connection

    from tests.servers import redis_server

    x = victims["digits-mlp"].X_test
    with redis_server() as url:
        shield = build_shield({
            "audit_url": f"sqlite:///{tmp_path}/a.db", "storage": {"limits": url},
            "global_limits": {"requests": "1000/minute"},
            "tiers": {"t": {"limits": {"requests": "100/minute"}, "on_flag": "deny",
                            "detectors": [{"volume": {"max_rows": 1000}}],
                            "detect": "after"}}})
        key, record = shield.store.create_key("t")
        shield.handle(key, x[:1])  # connections open
        shield.settle(record.key_id)
        sent: list[str] = []
        original = redis.connection.Connection.send_packed_command

        def counted(self: Any, command: Any, *a: Any, **k: Any) -> Any:
            sent.append(threading.current_thread().name)
            return original(self, command, *a, **k)

        monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
        shield.handle(key, x[1:2])
        on_path = [n for n in sent if not n.startswith("detect-after")]
        assert len(on_path) == 1
        shield.settle(record.key_id)
        assert len(sent) > 1  # the detectors' state, off the path
        shield.state.set(f"flag:{record.key_id}",
                         {"detector": "volume", "score": 1.0, "reason": "test"})
        with pytest.raises(Denied) as refused:
            shield.handle(key, x[2:3])
        assert refused.value.status == 403
        shield.close()


# -- on the event loop (the gateway's answer_on: loop) --------------------------------------

class _Seen:
    """A detector that notes when it looks."""

    name = "seen"
    kind = "classifier"
    sees = "all"
    needs_calibration = False

    def __init__(self) -> None:
        self.seen: list[int] = []

    def reads(self, ident: str, prediction: Any) -> list[Any]:
        return []

    def observe(self, ident: str, x: np.ndarray, prediction: Any) -> Flag | None:
        self.seen.append(len(x))
        return None


def test_on_the_loop_detection_runs_once_the_answer_is_out(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    shield = _shield(tmp_path, "after")
    seen = _Seen()
    shield.detectors["t"] = [seen]  # type: ignore[list-item]
    key, _ = shield.store.create_key("t")
    x = victims["digits-mlp"].X_test

    async def main() -> None:
        answer, _ = await shield.handle_on_loop(key, x[:2])
        assert len(answer.labels) == 2 and seen.seen == []  # answered, not yet watched
        await asyncio.sleep(0)  # the caller yields (its answer sent): the detectors look
        assert seen.seen == [2]
        await shield.handle_on_loop(key, x[2:5])
        await shield.handle_on_loop(key, x[5:6])  # the earlier one's detection ran first
        assert seen.seen[:2] == [2, 3]

    asyncio.run(main())
    assert shield.store.count(answered=True) == 3 and shield.store.verify().ok
    shield.close()


def test_on_the_loop_an_answer_the_log_cannot_take_is_refused_unwatched(
        tmp_path: Path, victims: dict[str, Victim], monkeypatch: pytest.MonkeyPatch) -> None:
    shield = _shield(tmp_path, "after")
    seen = _Seen()
    shield.detectors["t"] = [seen]  # type: ignore[list-item]
    key, _ = shield.store.create_key("t")

    def broken(contents: list[Any]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(shield.store, "_write", broken)

    async def main() -> None:
        with pytest.raises(Denied) as refused:
            await shield.handle_on_loop(key, victims["digits-mlp"].X_test[:1])
        assert refused.value.status == 503 and refused.value.code == "audit_unavailable"
        await asyncio.sleep(0)

    asyncio.run(main())
    assert seen.seen == [] and not shield._loop_pending
    shield.close()


def test_on_the_loop_a_refused_answer_leaves_the_next_ones_detection_alone(
        tmp_path: Path, victims: dict[str, Victim], monkeypatch: pytest.MonkeyPatch) -> None:
    """r1's record cannot be committed (503); r2, of the same key, runs its stages while
    r1's transaction is under way and is answered. r2's rows are watched (they reach the
    volume: r3 is refused), r1's are not (on a thread r1 would never have deferred)."""
    shield = _shield(tmp_path, "after")
    key, _ = shield.store.create_key("t")
    x = victims["digits-mlp"].X_test
    write = shield.store._write
    inside, go = threading.Event(), threading.Event()

    def first_fails(contents: list[Any]) -> None:
        if not inside.is_set():
            inside.set()
            go.wait(10)
            raise OSError("disk full")
        write(contents)

    monkeypatch.setattr(shield.store, "_write", first_fails)

    async def main() -> list[Any]:
        r1 = asyncio.create_task(shield.handle_on_loop(key, x[:1]))
        while not inside.is_set():  # the writer is in r1's transaction
            await asyncio.sleep(0.005)
        r2 = asyncio.create_task(shield.handle_on_loop(key, x[1:4]))
        await asyncio.sleep(0.02)  # r2's stages have run; its record waits
        go.set()
        done = await asyncio.gather(r1, r2, return_exceptions=True)
        return [*done, *await asyncio.gather(shield.handle_on_loop(key, x[4:5]),
                                             return_exceptions=True)]

    r1, r2, r3 = asyncio.run(main())
    assert isinstance(r1, Denied) and r1.status == 503
    assert isinstance(r2, tuple)
    assert isinstance(r3, Denied) and r3.status == 403
    shield.close()


def test_close_runs_the_detection_the_loop_never_got_to(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    shield = _shield(tmp_path, "after")
    seen = _Seen()
    shield.detectors["t"] = [seen]  # type: ignore[list-item]
    key, _ = shield.store.create_key("t")

    async def main() -> None:
        await shield.handle_on_loop(key, victims["digits-mlp"].X_test[:2])
        assert seen.seen == []  # the callback has not run: the Shield closes first
        shield.close()
        assert seen.seen == [2]
        await asyncio.sleep(0)  # the callback finds nothing left to run

    asyncio.run(main())
    assert seen.seen == [2]


def test_values_primed_for_a_refused_request_are_not_the_next_ones(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    """A request refused after its limits' script read its flags leaves them primed on
    its thread; the next request of the thread (on the loop: every one) reads afresh."""
    from tests.servers import redis_server

    with redis_server() as url:
        shield = build_shield({
            "audit_url": f"sqlite:///{tmp_path}/a.db", "storage": {"limits": url},
            "tiers": {"t": {"limits": {"requests": "100/minute"}, "on_flag": "throttle",
                            "throttled": {"requests": "1/hour"}}}})
        key, record = shield.store.create_key("t")
        shield.state.prime({f"flag:{record.key_id}": None})  # as a refused request left it
        shield.state.set(f"flag:{record.key_id}",
                         {"detector": "volume", "score": 1.0, "reason": "test"})
        x = victims["digits-mlp"].X_test
        shield.handle(key, x[:1])  # the throttled limit: one an hour
        with pytest.raises(Denied) as refused:
            shield.handle(key, x[1:2])
        assert refused.value.status == 429
        shield.close()


def test_the_loop_waits_for_a_large_requests_detection_without_stalling(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    """A large request runs on a thread and so does its detection; the account's next
    small request, on the loop, awaits that detection rather than block the loop on it."""
    from concurrent.futures import ThreadPoolExecutor

    shield = _shield(tmp_path, "after")

    class Slow(_Seen):  # slow on a large batch only (a small one's runs on the loop)
        def observe(self, ident: str, x: np.ndarray, prediction: Any) -> Flag | None:
            if len(x) > 16:
                time.sleep(0.3)
            return super().observe(ident, x, prediction)

    seen = Slow()
    shield.detectors["t"] = [seen]  # type: ignore[list-item]
    key, _ = shield.store.create_key("t")
    x = victims["digits-mlp"].X_test

    async def main() -> float:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as pool:
            await loop.run_in_executor(pool, shield.handle, key, x[:20])  # its detection runs
        longest, stop = 0.0, False

        async def beat() -> None:
            nonlocal longest
            while not stop:
                start = time.perf_counter()
                await asyncio.sleep(0.01)
                longest = max(longest, time.perf_counter() - start)

        beating = asyncio.create_task(beat())
        await asyncio.sleep(0.02)
        await shield.handle_on_loop(key, x[20:21])
        assert seen.seen == [20]  # the large request's detection came first
        stop = True
        await beating
        return longest

    assert asyncio.run(main()) < 0.2  # the loop kept turning while it waited
    shield.close()
    assert seen.seen == [20, 1]
