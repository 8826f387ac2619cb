"""Membership inference through the oracle, on a network the test trains apart from the zoo:
LiRA finds members a global threshold cannot, each policy meets the attacks it allows, and
budgets and bad input are refused before a query is spent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_classification

from modelshield.answer import Answer
from modelshield.attacks.membership import MEMBERSHIP, ShadowSet, coarsen_like, scaled_logit
from modelshield.audit.privacy import membership_metrics, run_privacy, tpr_at_fpr
from modelshield.defenses.policies import parse_policy
from modelshield.errors import AttackRefused, ConfigError
from modelshield.models import PrivateMLPClassifier, make_estimator
from modelshield.oracle import LocalOracle
from modelshield.victims.base import MembershipTask
from modelshield.victims.zoo import wrap_estimator

RECIPE = "mlp:hidden=128-128,epochs=80"


@pytest.fixture(scope="module")
def memorizer() -> tuple[Any, MembershipTask]:
    """A wide network trained on 300 rows of a 10-class population with 3% noisy labels."""
    X, y = make_classification(n_samples=1200, n_features=20, n_informative=10, n_redundant=0,
                               n_classes=10, n_clusters_per_class=2, flip_y=0.03,
                               random_state=1)
    est = make_estimator(RECIPE, n_classes=10, random_state=1).fit(X[:300], y[:300])
    task = MembershipTask("memorizer", X[:300], y[:300], X[300:600], y[300:600], X[600:],
                          y[600:], RECIPE)
    return wrap_estimator(est, X[300:600], y[300:600], name="memorizer"), task


@pytest.fixture(scope="module")
def shadows(memorizer: Any) -> ShadowSet:
    _, task = memorizer
    return ShadowSet.train(RECIPE, task.candidates, task.labels, task.population,
                           task.population_labels, n_shadows=16, n_classes=10,
                           train_size=300, random_state=5)


def _run(victim: Any, task: MembershipTask, attack: str, policy: str = "full",
         shadow_set: ShadowSet | None = None, **kw: Any) -> tuple[dict[str, Any], LocalOracle]:
    cls = MEMBERSHIP[attack]
    if cls.uses_shadows:
        kw = {"shadow": RECIPE, "train_size": 300, **kw}
    oracle = LocalOracle(victim, parse_policy(policy))
    r = cls(**kw).run(oracle, task.candidates, task.labels, population=task.population,
                      population_labels=task.population_labels, shadows=shadow_set)
    assert r.queries == oracle.used
    return membership_metrics(r.scores, task.is_member), oracle


def test_lira_finds_members_a_global_threshold_misses(memorizer: Any, shadows: ShadowSet
                                                      ) -> None:
    victim, task = memorizer
    loss, _ = _run(victim, task, "loss")
    lira, oracle = _run(victim, task, "lira", shadow_set=shadows)
    assert oracle.used == len(task.candidates)  # one query per candidate; shadows are local
    assert lira["tpr"]["1%"] >= 3 * max(loss["tpr"]["1%"], 1 / 300)
    assert lira["auc"] > loss["auc"] > 0.75
    offline, _ = _run(victim, task, "lira", shadow_set=shadows, online=False)
    rmia, oracle = _run(victim, task, "rmia", shadow_set=shadows, references=200)
    assert oracle.used == len(task.candidates) + 200
    for m in (offline, rmia):
        assert m["tpr"]["1%"] > loss["tpr"]["1%"] and m["auc"] > 0.75


def test_lira_trains_its_own_shadows_when_none_are_given(memorizer: Any) -> None:
    victim, task = memorizer
    # With few shadows a global variance is the better estimate (Carlini et al. 2022, Fig. 9).
    m, _ = _run(victim, task, "lira", shadows=4, fixed_variance=True)
    loss, _ = _run(victim, task, "loss")
    assert m["auc"] > loss["auc"] and m["tpr"]["1%"] > loss["tpr"]["1%"]


def test_labels_only_refuses_score_attacks_after_one_query_and_meets_label_only(
        memorizer: Any, shadows: ShadowSet) -> None:
    victim, task = memorizer
    for attack in ("loss", "confidence", "lira", "rmia"):
        oracle = LocalOracle(victim, parse_policy("label"))
        cls = MEMBERSHIP[attack]
        kw = {"shadow": RECIPE} if cls.uses_shadows else {}
        with pytest.raises(AttackRefused, match="scores"):
            cls(**kw).run(oracle, task.candidates, task.labels, population=task.population,
                          population_labels=task.population_labels, shadows=shadows)
        assert oracle.used == 1
    m, oracle = _run(victim, task, "label-only", policy="label", perturbations=10)
    assert oracle.used == len(task.candidates) * 11
    assert m["auc"] > 0.6


def test_a_budget_below_the_need_is_refused_before_any_query(memorizer: Any) -> None:
    victim, task = memorizer
    oracle = LocalOracle(victim)
    with pytest.raises(ConfigError, match=r"needs 6600 queries for 600 candidates"):
        MEMBERSHIP["label-only"](perturbations=10).run(oracle, task.candidates, task.labels,
                                                        budget=1000)
    with pytest.raises(ConfigError, match="offline needs the attacker's labelled population"):
        MEMBERSHIP["lira"](online=False).run(oracle, task.candidates, task.labels)
    with pytest.raises(ConfigError, match="population holds 0"):
        MEMBERSHIP["rmia"]().run(oracle, task.candidates, task.labels)
    with pytest.raises(ConfigError, match="labels must be class indices"):
        MEMBERSHIP["loss"]().run(oracle, task.candidates, task.labels + 10)
    assert oracle.used == 0


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ConfigError, match="shadows"):
        MEMBERSHIP["lira"](shadows=1)
    with pytest.raises(ConfigError, match="recipe"):
        MEMBERSHIP["lira"](shadow="transformer")
    with pytest.raises(ConfigError, match="gamma"):
        MEMBERSHIP["rmia"](gamma=0)
    with pytest.raises(ConfigError, match="unknown key"):
        make_estimator("mlp:layers=3")
    with pytest.raises(ConfigError, match="not key=value"):
        make_estimator("tree:deep")


def test_shadow_outputs_are_coarsened_like_the_answers() -> None:
    p = np.array([[0.61234, 0.3, 0.08766], [0.2, 0.5, 0.3]])
    rounded = Answer(labels=np.array([0]), probabilities=np.array([[0.61, 0.3, 0.09]]))
    assert np.allclose(coarsen_like(p, rounded), np.round(p, 2))
    top1 = Answer(labels=np.array([0]), probabilities=np.array([[0.61234, np.nan, np.nan]]))
    got = coarsen_like(p, top1)
    assert np.isnan(got).sum(axis=1).tolist() == [2, 2] and got[1, 1] == 0.5
    # A withheld true-class score takes an equal share of the mass left.
    assert scaled_logit(got, np.array([1, 1]))[0] == pytest.approx(
        np.log(0.19383 + 1e-45) - np.log(1 - 0.19383), abs=1e-3)


def test_tpr_at_fpr_reads_the_roc() -> None:
    members = np.array([True] * 10 + [False] * 1000)
    # Nine members above every non-member (0.0 .. 99.9); one amid them, at 50.05.
    scores = np.concatenate([np.arange(9) + 100.0, [50.05], np.arange(1000) / 10.0])
    assert tpr_at_fpr(scores, members, 0.0) == pytest.approx(0.9)
    assert tpr_at_fpr(scores, members, 1e-3) == pytest.approx(0.9)
    assert tpr_at_fpr(scores, members, 0.498) == pytest.approx(0.9)
    assert tpr_at_fpr(scores, members, 0.499) == 1.0  # 499 non-members score above 50.05
    m = membership_metrics(scores, members)
    assert m["resolution"] == pytest.approx(1e-3) and m["auc"] == pytest.approx(0.9 + 0.1 * 0.501)
    rng = np.random.default_rng(0)
    chance = membership_metrics(rng.normal(size=4000), rng.random(4000) < 0.5)
    assert abs(chance["auc"] - 0.5) < 0.05 and chance["tpr"]["0.1%"] < 0.02
    with pytest.raises(ValueError, match="members and non-members"):
        membership_metrics(scores[:10], members[:10])


def test_run_privacy_shares_shadows_and_reports_refusals(memorizer: Any) -> None:
    victim, task = memorizer
    seen: list[int] = []
    rows = run_privacy(task, lambda need: LocalOracle(victim, parse_policy("top-k:1")),
                       [("loss", {}), ("lira", {"online": False}), ("label-only",
                                                                    {"perturbations": 2})],
                       n_classes=10, shadows=4, on_shadow=seen.append)
    assert seen == [1, 2, 3, 4]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert rows[1]["info"]["shadows"] == 4 and rows[1]["info"]["recipe"] == RECIPE
    rows = run_privacy(task, lambda need: LocalOracle(victim, parse_policy("label")),
                       [("loss", {})], n_classes=10)
    assert rows[0]["status"] == "refused" and "scores" in rows[0]["reason"]
    assert rows[0]["queries"] == 1
    no_recipe = MembershipTask("x", task.members, task.member_labels, task.non_members,
                               task.non_member_labels, task.population,
                               task.population_labels)
    with pytest.raises(ConfigError, match="--recipe"):
        run_privacy(no_recipe, lambda need: LocalOracle(victim), [("lira", {})], n_classes=10)


def test_dp_sgd_spends_at_most_its_epsilon_and_costs_accuracy() -> None:
    X, y = make_classification(n_samples=600, n_features=10, n_informative=6, n_classes=3,
                               random_state=0)
    dp = PrivateMLPClassifier((32,), n_classes=3, epochs=5, batch_size=64, lr=3e-3,
                              epsilon=2.0).fit(X[:400], y[:400])
    assert 0 < dp.epsilon_ <= 2.0 * 1.01
    plain = PrivateMLPClassifier((32,), n_classes=3, epochs=5, epsilon=None).fit(X[:400], y[:400])
    assert plain.epsilon_ == float("inf")
    assert np.mean(dp.predict(X[400:]) == y[400:]) > 0.4  # it still learns
    with pytest.raises(ConfigError, match="epsilon"):
        PrivateMLPClassifier(epsilon=0).fit(X, y)
