"""A request is charged only when every limit admits it: a key or an address past its own
limit spends nothing of the global budget (memory and a real Redis, every strategy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelshield.defenses.shield import Shield
from modelshield.errors import Denied
from modelshield.serve.factory import build_shield
from modelshield.victims import Victim
from tests.servers import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _shield(tmp_path: Path, limits_url: str, strategy: str) -> Shield:
    return build_shield({
        "audit_url": f"sqlite:///{tmp_path}/a.db",
        "storage": {"limits": limits_url, "strategy": strategy},
        "global_limits": {"requests": "6/minute", "rows": "60/minute"},
        "ip_limits": {"requests": "4/minute"},
        "tiers": {"small": {"limits": {"requests": "2/minute"}},
                  "big": {"limits": {"requests": "100/minute"}}}})


def _statuses(shield: Shield, key: str, x: object, n: int, ip: str) -> list[int]:
    out = []
    for _ in range(n):
        try:
            shield.handle(key, x, ip)
            out.append(200)
        except Denied as exc:
            out.append(exc.status)
    return out


CASES = [("memory", "moving-window"), ("memory", "sliding-window"),
         ("memory", "fixed-window"), ("redis", "moving-window"),
         ("redis", "sliding-window"), ("redis", "fixed-window")]


@pytest.mark.parametrize(("where", "strategy"), CASES)
def test_refused_requests_spend_no_shared_budget(tmp_path: Path, where: str, strategy: str,
                                                 redis_url: str,
                                                 victims: dict[str, Victim]) -> None:
    # A fresh database per case: the counters of one case never reach the next.
    url = "memory://" if where == "memory" else \
        redis_url.rsplit("/", 1)[0] + f"/{CASES.index((where, strategy))}"
    shield = _shield(tmp_path, url, strategy)
    if where == "redis":
        shield.limiter.storage.get_connection().flushdb()  # type: ignore[attr-defined]
    x = victims["digits-mlp"].X_test[:1]
    greedy = shield.store.create_key("small")[0]
    # Ten requests from a key allowed two: eight refused by the key's own limit.
    assert _statuses(shield, greedy, x, 10, "10.0.0.1") == [200] * 2 + [429] * 8
    # Address 10.0.0.2 spends its four, then is refused by its own limit five times.
    other = shield.store.create_key("big")[0]
    assert _statuses(shield, other, x, 9, "10.0.0.2") == [200] * 4 + [429] * 5
    # The global budget of six has lost only the six admitted requests: it is spent now,
    # and was not before (the refusals above took none of it).
    third = shield.store.create_key("big")[0]
    assert _statuses(shield, third, x, 1, "10.0.0.3") == [429]
    shield.close()


@pytest.mark.parametrize(("where", "strategy"), [("memory", "moving-window"),
                                                 ("redis", "moving-window")])
def test_the_global_budget_admits_every_customer_while_one_key_hammers(
        tmp_path: Path, where: str, strategy: str, redis_url: str,
        victims: dict[str, Victim]) -> None:
    url = "memory://" if where == "memory" else redis_url.rsplit("/", 1)[0] + "/9"
    shield = _shield(tmp_path, url, strategy)
    if where == "redis":
        shield.limiter.storage.get_connection().flushdb()  # type: ignore[attr-defined]
    x = victims["digits-mlp"].X_test[:1]
    greedy = shield.store.create_key("small")[0]
    _statuses(shield, greedy, x, 50, "10.0.0.1")  # two answered, 48 refused
    honest = [shield.store.create_key("big")[0] for _ in range(4)]
    # Four customers, each from its own address, one request each: all within the global
    # six once only the greedy key's two answered requests were charged.
    assert [_statuses(shield, k, x, 1, f"10.0.1.{i}")[0] for i, k in enumerate(honest)] \
        == [200] * 4
    shield.close()


def test_a_refused_request_reports_the_limit_that_refused_it(
        tmp_path: Path, redis_url: str, victims: dict[str, Victim]) -> None:
    for i, url in enumerate(("memory://", redis_url.rsplit("/", 1)[0] + "/10")):
        (tmp_path / str(i)).mkdir()
        shield = _shield(tmp_path / str(i), url, "moving-window")
        x = victims["digits-mlp"].X_test[:1]
        key = shield.store.create_key("small")[0]
        _statuses(shield, key, x, 2, "10.0.0.9")
        with pytest.raises(Denied) as exc:
            shield.handle(key, x, "10.0.0.9")
        assert exc.value.status == 429 and "for key (requests)" in str(exc.value)
        assert exc.value.headers["RateLimit-Limit"] == "2"
        assert exc.value.headers["RateLimit-Remaining"] == "0"
        shield.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_memory_window_is_exact_and_charges_all_or_none() -> None:
    from limits import parse

    from modelshield.defenses.limits_batch import MemoryMovingWindow

    clock = _Clock()
    window = MemoryMovingWindow(clock, sweep_seconds=5)
    five, ten = parse("5/second"), parse("10/minute")
    both = [(five, "k", 1, True), (ten, "g", 1, False)]
    outcomes = []
    for _ in range(7):
        outcomes.append(window.charge(both))
        clock.now += 0.01
    assert [o[0][0] for o in outcomes] == [True] * 5 + [False] * 2  # type: ignore[index]
    assert outcomes[4][0][2] == 0 and outcomes[5][1] is None  # remaining; "g" admitted
    # The two refused requests were charged nowhere: "g" holds five of its ten.
    assert window.charge([(ten, "g", 5, True)])[0] == (True, 1060.0, 0)
    assert window.charge([(ten, "g", 1, True)])[0][0] is False  # type: ignore[index]
    clock.now = 1001.005  # the first entry of "k" has left its window (one second on)
    assert window.charge([(five, "k", 1, True)])[0] == (True, 1001.01, 0)
    assert window.charge([(five, "k", 6, True)])[0][0] is False  # type: ignore[index]
    clock.now = 1100.0  # every window is empty; a sweep drops them
    window.charge([(five, "other", 1, False)])
    assert list(window._windows) == [("other", 5, 1)]
