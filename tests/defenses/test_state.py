"""Every detector-state back end behaves the same (memory, and a real Redis)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from modelshield.defenses.state import DetectorState, state_from_url
from modelshield.errors import ConfigError
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
