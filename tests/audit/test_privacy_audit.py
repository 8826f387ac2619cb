"""Membership inference in the audit: privacy cells per defense through the real Shield, the
shadow models trained once and shared, the exposure in the rating, the report and the
summary; an owner's model file with its membership file; bad privacy sections refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from modelshield.audit.report import render_html, render_markdown
from modelshield.audit.runner import plan, run_audit
from modelshield.audit.scenario import load_scenario
from modelshield.errors import ConfigError


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A forest that memorizes its 200 training rows, its file, its test data and its
    membership file."""
    X, y = make_classification(n_samples=1000, n_features=12, n_informative=6, n_classes=4,
                               n_clusters_per_class=2, flip_y=0.05, random_state=11)
    model = RandomForestClassifier(n_estimators=40, random_state=0).fit(X[:200], y[:200])
    folder = tmp_path_factory.mktemp("owner")
    joblib.dump(model, folder / "ledger.joblib")
    np.savez(folder / "data.npz", X_test=X[200:400], y_test=y[200:400], pool=X[400:700])
    np.savez(folder / "members.npz", members=X[:200], member_labels=y[:200],
             non_members=X[200:400], non_member_labels=y[200:400], population=X[400:],
             population_labels=y[400:])
    return folder / "ledger.joblib", folder / "data.npz", folder / "members.npz"


def scenario(owner: Any, **privacy: Any) -> dict[str, Any]:
    model, data, members = owner
    return {
        "name": "ledger", "target": {"file": str(model), "data": str(data)},
        "attackers": [{"attack": "knockoff", "params": {"source": "pool"}, "budgets": [50]}],
        "defenses": [{"name": "none"}, {"name": "labels", "policy": "label"}],
        "benign": {"accounts": 1, "archetypes": ["iid"]},
        "privacy": {"attacks": ["loss", "lira:fixed_variance=true", "label-only:perturbations=4"],
                    "shadows": 4, "recipe": "forest:n_estimators=40", "data": str(members),
                    **privacy},
    }


def test_privacy_cells_rate_the_exposure_and_reach_the_report(
        owner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path / "cache"))
    s = load_scenario(scenario(owner))
    cells = plan(s)
    assert [c["kind"] for c in cells].count("privacy") == 2
    doc = run_audit(s, tmp_path / "out", workers=1)
    none, labels = doc["analysis"]["defenses"]
    rows = {r["attack"]: r for r in none["privacy"]["attacks"]}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["loss"]["queries"] == 400 and rows["label-only:perturbations=4"]["queries"] == 2000
    best = max(rows.values(), key=lambda r: r["tpr"]["0.1%"])
    assert none["privacy"]["best"] == best["attack"]
    expected = ("HIGH" if best["tpr"]["0.1%"] >= 0.1 else
                "MEDIUM" if best["tpr"]["0.1%"] >= 0.01 else "LOWER")
    assert none["privacy"]["level"] == expected
    # Labels only refuses the score attacks (after one query each) and meets label-only.
    lrows = {r["attack"]: r for r in labels["privacy"]["attacks"]}
    assert lrows["loss"]["status"] == "refused" and lrows["lira:fixed_variance=true"][
        "status"] == "refused"
    assert lrows["label-only:perturbations=4"]["status"] == "ok"
    # The rating as deployed is the worse of extraction and membership exposure.
    rating = doc["analysis"]["rating"]
    order = ["LOWER", "MEDIUM", "HIGH"]
    assert rating["inference"] == none["privacy"]["level"]
    assert rating["level"] == max(rating["extraction"], rating["inference"], key=order.index)
    assert any(f.startswith("Membership inference:") for f in rating["facts"])
    # The shadows were trained once, for both defenses, and kept for the next run.
    assert len(list((tmp_path / "cache" / "shadows").glob("*.npz"))) == 1
    html = render_html(json.loads(json.dumps(doc)))
    assert 'id="fig-privacy"' in html and 'id="privacy"' in html and "<svg" in html
    assert "membership inference" in render_markdown(doc).lower()
    # A privacy cell that broke is a fact in the rating, and the page still renders.
    from modelshield.audit.analysis import analyse

    cells = [{**c, "status": "error", "reason": "the membership file is gone"}
             if c["kind"] == "privacy" and c["defense"] == "none" else c for c in doc["cells"]]
    broken = {**doc, "cells": cells, "analysis": analyse(s, cells)}
    assert broken["analysis"]["rating"]["inference"] is None
    assert any("not measured: the membership file is gone" in f
               for f in broken["analysis"]["rating"]["facts"])
    assert 'id="privacy"' in render_html(broken) and render_markdown(broken)


def test_a_bad_privacy_section_names_the_field(owner: Any) -> None:
    cases = [
        ({"attacks": ["lira-max"]}, "privacy.attacks: Value error, unknown membership attack"),
        ({"attacks": ["lira:shadows=1"]}, "shadows"),
        ({"recipe": "gpt"}, "privacy.recipe"),
        ({"shadows": 1}, "privacy.shadows"),
        ({"data": "nowhere.npz"}, "privacy.data: 'nowhere.npz' does not exist"),
        ({"data": None}, "privacy.data: a model file needs its members"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError) as info:
            load_scenario(scenario(owner, **change))
        assert message.split(": Value error")[0] in str(info.value), (change, str(info.value))
        assert message.split("Value error, ")[-1] in str(info.value)
    with pytest.raises(ConfigError, match="a built-in victim knows its members"):
        load_scenario({**scenario(owner), "target": {"victim": "digits-mlp"}})


@pytest.mark.slow
def test_an_attacker_spreading_over_keys_gets_further_past_the_detectors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """digits-mlp behind every detector set to deny: RMIA with one key is suspended once its
    candidates have been answered (prada); spread over 10 keys of as many owners, it gets
    its reference queries answered too before the ood detector stops it."""
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path / "cache"))
    answered = {}
    for keys in (1, 10):
        s = load_scenario({
            "name": "keys", "target": {"victim": "digits-mlp"},
            "attackers": [{"attack": "knockoff", "params": {"source": "pool"}, "budgets": [20]}],
            "defenses": [{"name": "monitored", "on_flag": "deny",
                          "detectors": ["sweep", "boundary", "ood", "prada", "volume"]}],
            "benign": {"accounts": 1, "archetypes": ["iid"]},
            "privacy": {"attacks": ["rmia"], "shadows": 4, "keys": keys}})
        doc = run_audit(s, tmp_path / f"out{keys}", workers=1)
        row = doc["analysis"]["defenses"][0]["privacy"]["attacks"][0]
        assert row["status"] == "blocked"
        answered[keys] = row["queries"]
    assert answered[10] > answered[1]
