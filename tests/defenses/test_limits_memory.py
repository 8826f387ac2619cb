"""The in-process rate-limit storage: the same decisions as the library's, without a new
timer thread every 10 ms."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from limits import parse
from limits.strategies import MovingWindowRateLimiter

from modelshield.defenses.limits_memory import SweptMemoryStorage
from modelshield.errors import Denied
from modelshield.serve.factory import build_shield
from modelshield.victims import Victim


def test_exact_moving_window_and_one_sweeper_thread() -> None:
    storage = SweptMemoryStorage(sweep_seconds=0.05)
    first_timer = storage.timer
    limiter = MovingWindowRateLimiter(storage)
    rate = parse("5/second")
    assert [limiter.hit(rate, "k") for _ in range(7)] == [True] * 5 + [False] * 2
    for _ in range(500):  # the library's storage would have started timer threads here
        limiter.hit(parse("100000/second"), "busy")
    assert storage.timer is first_timer  # no timer was scheduled
    assert storage._sweeper is not None and storage._sweeper.is_alive()
    time.sleep(1.1)
    assert limiter.hit(rate, "k")  # the window moved on
    time.sleep(1.2)  # past every entry's expiry, and a sweep or more
    assert "busy" not in storage.events  # expired entries were freed


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window", "fixed-window"])
def test_every_strategy_admits_exactly_the_limit(tmp_path: Path, strategy: str,
                                                 victims: dict[str, Victim]) -> None:
    shield = build_shield({"audit_url": f"sqlite:///{tmp_path}/a.db",
                                 "storage": {"strategy": strategy},
                                 "tiers": {"t": {"limits": {"requests": "5/minute"}}}})
    assert isinstance(shield.limiter.storage, SweptMemoryStorage)
    key = shield.store.create_key("t")[0]
    x = victims["digits-mlp"].X_test[:1]
    outcomes = []
    for _ in range(8):
        try:
            shield.handle(key, x)
            outcomes.append(200)
        except Denied as exc:
            outcomes.append(exc.status)
    shield.close()
    assert outcomes == [200] * 5 + [429] * 3
