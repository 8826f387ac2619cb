"""Exact extraction of one-hidden-layer ReLU networks, on owner-style models built here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelshield.answer import ApiSpec
from modelshield.audit import run_cell
from modelshield.audit.evaluate import uniform_probe
from modelshield.victims.base import SklearnAdapter, Victim


def owner_mlp(hidden: int, classes: int, d: int, seed: int) -> Victim:
    """A pipeline an owner might ship: scaling, then one hidden ReLU layer."""
    X, y = make_classification(2000, d, n_informative=d // 2, n_classes=classes,
                               n_clusters_per_class=1, random_state=seed)
    with warnings.catch_warnings():  # a victim short of convergence is a victim all the same
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_pipeline(StandardScaler(), MLPClassifier(
            (hidden,), max_iter=300, random_state=seed)).fit(X[:1000], y[:1000])
    spec = ApiSpec(n_features=d, classes=tuple(map(str, range(classes))),
                   low=X.min(axis=0), high=X.max(axis=0), name=f"owner-mlp-{hidden}")
    return Victim(spec.name, SklearnAdapter(model), spec, X[1000:1500], y[1000:1500],
                  X[1500:], X[:1000], kind="mlp")


@pytest.mark.parametrize(("hidden", "classes", "d", "seed"), [(16, 3, 10, 1), (24, 4, 12, 2)])
def test_every_hidden_unit_is_found_and_the_outputs_match_to_2_pow_minus_25(
        hidden: int, classes: int, d: int, seed: int) -> None:
    v = owner_mlp(hidden, classes, d, seed)
    r = run_cell(v, "relu-exact", "full", 100_000, seed, uniform_points=2000)
    assert r.status == "ok", r.reason
    assert r.info["hidden_units_found"] == hidden
    assert r.fidelity_test == 1.0 and r.fidelity_uniform == 1.0
    x = uniform_probe(v, 2000, seed + 7)
    p = v.predict(x).probabilities
    truth = np.log(p[:, 1:]) - np.log(p[:, :1])
    assert np.abs(r.clone.log_ratios(x) - truth).max() <= 2.0 ** -25


def test_rounded_scores_are_refused_after_one_query() -> None:
    v = owner_mlp(8, 2, 6, 3)
    r = run_cell(v, "relu-exact", "round:4", 10_000)
    assert r.status == "refused" and r.queries == 1
    assert run_cell(v, "relu-exact", "label", 10_000).queries == 1


def test_a_short_budget_keeps_what_the_final_fit_needs_and_says_so() -> None:
    v = owner_mlp(16, 3, 10, 1)
    full = run_cell(v, "relu-exact", "full", 100_000, 1, uniform_points=1000)
    short = run_cell(v, "relu-exact", "full", full.queries // 2, 1, uniform_points=1000)
    assert short.status == "ok" and short.queries <= full.queries // 2
    assert "the budget ended the search" in short.reason
    assert 0 < short.info["hidden_units_found"] <= 16
