"""The attacker's data: the natural rows of its pool, and the typical ones among them."""

from __future__ import annotations

import numpy as np
import pytest

from modelshield.attacks.data_choice import typical_rows
from modelshield.audit.runner import attack_pool
from modelshield.audit.scenario import DEMO, load_scenario
from modelshield.data.datasets import shift_augment
from modelshield.data.pools import describe, natural_rows, pool_parts
from modelshield.errors import ConfigError
from modelshield.victims import load_victim


def test_the_digits_pool_says_it_is_449_digits_and_their_shifts() -> None:
    v = load_victim("digits-mlp")
    parts = pool_parts(v.pool, v.spec.integer_features)
    assert [(p.kind, p.start, p.stop) for p in parts] == [("natural", 0, 449),
                                                          ("augmented", 449, 4041)]
    assert "3,592 augmented" in describe(parts)
    np.testing.assert_array_equal(attack_pool(v), v.pool[:449])


def test_a_pool_is_augmented_only_when_its_tail_is_the_shifts_of_its_head() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, (20, 64)).astype(np.float64)
    pool = shift_augment(images, side=8)
    assert natural_rows(pool, True).shape == (20, 64)
    tampered = pool.copy()
    tampered[-1, 0] += 1  # one shifted pixel off: not what shift_augment makes
    assert [p.kind for p in pool_parts(tampered, True)] == ["natural"]
    assert len(natural_rows(tampered, True)) == len(pool)
    # Not integer features (an owner's tabular pool): every row is natural.
    assert [p.kind for p in pool_parts(pool, False)] == ["natural"]


def test_typical_rows_leave_out_what_the_attackers_own_density_finds_far() -> None:
    rng = np.random.default_rng(1)
    pool = np.vstack([rng.normal(0, 1, (200, 5)), rng.normal(0, 1, (4, 5)) + 8])
    kept = typical_rows(pool, 0.9)
    assert len(kept) == 184 and (np.abs(kept).max(axis=1) < 6).all()
    assert len(typical_rows(pool, 0.5, at_least=190)) == 190  # as many as the budget spends
    with pytest.raises(ConfigError, match="typical"):
        typical_rows(pool, 0.0)


def test_the_demo_plays_a_knockoff_of_natural_digits_and_one_that_knows_the_detectors(
        ) -> None:
    s = load_scenario(DEMO)
    knock = next(a for a in s.attackers if a.label == "knockoff (natural data)")
    assert knock.draws_pool and not knock.adaptive
    typical = [a for a in s.attackers if a.typical > 0]
    assert typical and all(a.counterpart and a.draws_pool and a.keys == 10
                           for a in typical)
