"""Membership inference's attacks are parsed and checked before any shadow model is
trained, and each attack gets a fresh oracle."""

from __future__ import annotations

import pytest

from modelshield.audit.membership_run import (
    DEFAULT_ATTACKS,
    local_oracles,
    parse_membership_attacks,
)
from modelshield.errors import ConfigError
from modelshield.victims import Victim


def test_attacks_keep_their_label_and_typed_parameters() -> None:
    specs = parse_membership_attacks(["loss", "lira:online=false,fixed_variance=true"])
    assert [s.label for s in specs] == ["loss", "lira:online=false,fixed_variance=true"]
    assert [s.name for s in specs] == ["loss", "lira"]
    assert specs[1].params == {"online": False, "fixed_variance": True}
    assert not specs[0].uses_shadows and specs[1].uses_shadows
    assert [s.name for s in parse_membership_attacks(DEFAULT_ATTACKS)] == list(DEFAULT_ATTACKS)


def test_a_wrong_name_or_value_fails_before_training() -> None:
    with pytest.raises(ConfigError, match="Unknown membership attack 'lossy'"):
        parse_membership_attacks(["lossy"])
    with pytest.raises(ConfigError, match="--attack"):
        parse_membership_attacks(["lira:nonsense=1"])


def test_each_attack_gets_a_fresh_oracle_behind_the_policy(victims: dict[str, Victim]) -> None:
    oracle_for = local_oracles(victims["digits-lr"], "label", price=2.0)
    first, second = oracle_for(0), oracle_for(0)
    assert first is not second
    answer = first.query(victims["digits-lr"].pool[:3])
    assert answer.labels.shape == (3,) and first.used == 3 and second.used == 0
