"""The oracle counts, prices, refuses past its budget, logs, and guards the victim."""

from __future__ import annotations

import numpy as np
import pytest

from modelshield.defenses import parse_policy
from modelshield.errors import BudgetExhausted, CheatingError, ConfigError, OracleError
from modelshield.oracle import LocalOracle, QueryLog
from modelshield.victims import Victim


def test_budget_counts_rows_and_refuses_the_whole_batch_past_it(victims: dict[str, Victim]) -> None:
    v = victims["breast-cancer-lr"]
    oracle = LocalOracle(v, budget=10, price_per_1k=2.0)
    oracle.query(v.X_test[:6])
    assert oracle.used == 6 and oracle.remaining == 4
    assert oracle.cost == pytest.approx(6 * 2.0 / 1000)
    with pytest.raises(BudgetExhausted, match="asked for 5 more queries, 6 of 10 already used"):
        oracle.query(v.X_test[:5])
    assert oracle.used == 6  # nothing of the refused batch was answered
    oracle.query(v.X_test[:4])
    assert oracle.remaining == 0


def test_inputs_are_checked_against_the_api(victims: dict[str, Victim]) -> None:
    oracle = LocalOracle(victims["breast-cancer-lr"])
    with pytest.raises(OracleError, match=r"shape \(n, 30\)"):
        oracle.query(np.zeros((2, 5)))
    with pytest.raises(OracleError, match="finite"):
        oracle.query(np.full((1, 30), np.inf))
    with pytest.raises(OracleError, match="missing"):
        oracle.query(np.full((1, 30), np.nan))
    assert oracle.used == 0


def test_tree_victims_accept_missing_features_and_stop_at_that_node(
        victims: dict[str, Victim]) -> None:
    v = victims["wine-tree"]
    oracle = LocalOracle(v, parse_policy("leaf-id"))
    answer = oracle.query(np.full((1, 13), np.nan))
    assert answer.leaf_ids is not None and answer.leaf_ids[0] == 0  # the root answers


def test_query_log_round_trips_through_a_file(victims: dict[str, Victim], tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = victims["digits-lr"]
    times = iter([100.0, 200.0])
    oracle = LocalOracle(v, parse_policy("round:3"), clock=lambda: next(times))
    oracle.query(v.X_test[:3])
    oracle.query(v.X_test[3:5])
    path = oracle.log.save(tmp_path / "log.npz")
    back = QueryLog.load(path).arrays()
    np.testing.assert_array_equal(back["inputs"], v.X_test[:5])
    np.testing.assert_array_equal(back["times"], [100, 100, 100, 200, 200])
    np.testing.assert_array_equal(back["probabilities"], oracle.log.arrays()["probabilities"])
    assert len(QueryLog.load(path)) == 5


def test_the_victim_cannot_be_reached_around_the_oracle(victims: dict[str, Victim]) -> None:
    oracle = LocalOracle(victims["breast-cancer-lr"])
    with pytest.raises(CheatingError):
        _ = oracle.victim
    with pytest.raises(CheatingError):
        oracle._victim.predict(np.zeros((1, 30)))


def test_tree_policy_on_a_non_tree_victim_is_a_config_error(victims: dict[str, Victim]) -> None:
    with pytest.raises(ConfigError, match="needs a decision-tree victim"):
        LocalOracle(victims["digits-lr"], parse_policy("leaf-id"))


def test_negative_budget_is_refused(victims: dict[str, Victim]) -> None:
    with pytest.raises(ConfigError, match="'budget' parameter"):
        LocalOracle(victims["digits-lr"], budget=-1)
