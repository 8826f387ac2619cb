"""Attacks whose assumption fails in the answers say so in their status, on owner-style models
built here (not the zoo): path-finding where outputs repeat across leaves, equation solving
on a model that is not logistic, Lowd-Meek on a boundary that is not a hyperplane."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from modelshield.answer import ApiSpec
from modelshield.audit import run_cell
from modelshield.audit.analysis import _curve
from modelshield.victims.base import SklearnAdapter, Victim


def owner_tree(seed: int, d: int = 6, classes: int = 3, depth: int = 6,
               n: int = 4000) -> Victim:
    """A depth-6 tree an owner might ship: 50-odd leaves, many of them answering alike."""
    X, y = make_classification(n, d, n_informative=d // 2, n_classes=classes,
                               random_state=seed)
    tree = DecisionTreeClassifier(max_depth=depth, random_state=seed).fit(X[: n // 2],
                                                                          y[: n // 2])
    spec = ApiSpec(n_features=d, classes=tuple(map(str, range(classes))), low=X.min(axis=0),
                   high=X.max(axis=0), name="owner-tree")
    return Victim(spec.name, SklearnAdapter(tree), spec, X[n // 2: 3 * n // 4],
                  y[n // 2: 3 * n // 4], X[3 * n // 4:], X[: n // 2], kind="tree")


def breast_cancer_mlp(seed: int = 0) -> Victim:
    X, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order], y[order]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = make_pipeline(StandardScaler(), MLPClassifier(
            (16,), max_iter=500, random_state=seed)).fit(X[:285], y[:285])
    spec = ApiSpec(n_features=30, classes=("0", "1"), low=X.min(axis=0), high=X.max(axis=0),
                   name="bc-mlp")
    return Victim(spec.name, SklearnAdapter(net), spec, X[427:], y[427:], X[285:427],
                  X[:285], kind="mlp")


@pytest.fixture(scope="module")
def tree() -> Victim:
    return owner_tree(0)


def distinct_outputs(v: Victim) -> int:
    t = v.model.tree.tree_  # type: ignore[attr-defined]
    values = t.value[t.children_left < 0][:, 0, :]
    return len({tuple(np.round(row / row.sum(), 12)) for row in values})


def test_path_finding_copies_a_tree_whose_probability_outputs_repeat(tree: Victim) -> None:
    leaves = tree.model.tree.get_n_leaves()  # type: ignore[attr-defined]
    assert distinct_outputs(tree) < 0.7 * leaves  # the outputs do not identify leaves
    scores = run_cell(tree, "path-finding", "full", 100_000, uniform_points=2000)
    assert scores.status == "ok", scores.reason
    assert scores.fidelity_test is not None and scores.fidelity_test >= 0.99
    assert scores.fidelity_uniform is not None and scores.fidelity_uniform >= 0.99
    assert scores.info["checked_cuts"] > 0 and scores.info["holdout_agreement"] >= 0.99
    ids = run_cell(tree, "path-finding", "leaf-id", 100_000, uniform_points=2000)
    assert ids.status == "ok" and "holdout_agreement" not in ids.info  # ids are unique
    assert ids.fidelity_test is not None and ids.fidelity_test >= 0.99
    assert ids.queries < scores.queries


def test_path_finding_says_when_held_back_answers_disagree_and_the_audit_drops_it(
        tree: Victim) -> None:
    weak = run_cell(tree, "path-finding", "full", 100_000, uniform_points=2000,
                    params={"checks": 1, "holdout_rounds": 1})
    assert weak.status == "failed"
    assert "do not identify leaves" in weak.reason and "held-back" in weak.reason
    assert weak.info["holdout_agreement"] < 0.99
    assert weak.fidelity_test is not None and weak.fidelity_test < 0.99  # scored all the same
    cell = weak.to_dict()
    assert _curve([cell]) == []  # never the attacker's copy in the audit


def test_equation_solving_checks_its_exact_claim_against_held_back_answers() -> None:
    mlp = breast_cancer_mlp()
    r = run_cell(mlp, "equation-solving", "full", 100, uniform_points=1000)
    assert r.status == "failed" and "model family does not match" in r.reason
    assert r.info["exact"] is False and r.queries == 31 + 3 + 1
    assert r.info["hair_move"] < 1e-6 < r.info["held_back_error"]


def test_lowd_meek_checks_its_boundary_where_the_attackers_rows_lie() -> None:
    """A breast-cancer MLP's boundary is nearly flat (the linear copy agrees on 97% of the
    test rows) but not a hyperplane: stepped off it at the attacker's rows, moved onto it,
    points answer on the wrong side. A logistic model's passes."""
    r = run_cell(breast_cancer_mlp(), "label-only", "label", 600, uniform_points=1000)
    assert r.status == "failed" and "no usable linear boundary" in r.reason
    from modelshield.victims import load_victim

    ok = run_cell(load_victim("breast-cancer-lr", 0), "label-only", "label", 600,
                  uniform_points=1000)
    assert ok.status == "ok" and ok.info["boundary_check"] == "16 of 16 sides right"


def test_lowd_meek_says_when_the_boundary_is_not_a_hyperplane() -> None:
    X, _ = make_classification(4000, 6, n_informative=3, n_classes=2, random_state=3)
    ring = (np.linalg.norm(X[:, :2], axis=1) < 1.2).astype(int)  # a round boundary
    model = DecisionTreeClassifier(max_depth=8, random_state=0).fit(X[:2000], ring[:2000])
    spec = ApiSpec(n_features=6, classes=("0", "1"), low=X.min(axis=0), high=X.max(axis=0),
                   name="ring")
    v = Victim("ring", SklearnAdapter(model), spec, X[2000:3000], ring[2000:3000], X[3000:],
               X[:2000], kind="tree")
    r = run_cell(v, "label-only", "label", 1000, uniform_points=1000)
    assert r.status == "failed" and "no usable linear boundary" in r.reason


def test_top_down_checks_its_tree_where_answers_repeat() -> None:
    """With incomplete queries the tree is mapped top-down; where answers repeat across
    leaves rounds of held-back answers test it, and a leaf-id output needs none."""
    v = owner_tree(2)
    v.spec = dataclasses.replace(v.spec, accepts_missing=True)
    scores = run_cell(v, "path-finding", "full", 100_000, params={"incomplete": True},
                      uniform_points=2000)
    assert scores.info["holdout_queries"] >= 300
    assert scores.status == "failed" and scores.info["holdout_agreement"] < 0.99
    assert scores.fidelity_uniform is not None and scores.fidelity_uniform < 0.99
    ids = run_cell(v, "path-finding", "leaf-id", 100_000, params={"incomplete": True},
                   uniform_points=2000)
    assert ids.status == "ok" and "holdout_agreement" not in ids.info
    assert ids.fidelity_uniform is not None and ids.fidelity_uniform >= 0.99
