"""Membership inference on the owner's own model from the CLI: a random forest the test trains
apart from the zoo, saved to a file with its members and non-members, attacked in-process
and through a gateway that serves it; bad names, values and files refused with a message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from typer.testing import CliRunner

from modelshield.cli import app
from modelshield.errors import ConfigError
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_gateway
from tests.servers import live_app

runner = CliRunner()
RECIPE = "forest:n_estimators=50"


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A forest trained on 200 rows (it memorizes them), its file and its membership file."""
    X, y = make_classification(n_samples=1000, n_features=12, n_informative=6, n_classes=4,
                               n_clusters_per_class=2, flip_y=0.05, random_state=7)
    model = RandomForestClassifier(n_estimators=50, random_state=0).fit(X[:200], y[:200])
    folder = tmp_path_factory.mktemp("owner")
    joblib.dump(model, folder / "ledger.joblib")
    np.savez(folder / "members.npz", members=X[:200], member_labels=y[:200],
             non_members=X[200:400], non_member_labels=y[200:400], population=X[400:],
             population_labels=y[400:])
    return folder / "ledger.joblib", folder / "members.npz"


def test_in_process_the_owner_model_is_scored_with_a_roc(owner: Any, tmp_path: Path) -> None:
    model_file, data = owner
    out, roc = tmp_path / "m.json", tmp_path / "roc.png"
    r = runner.invoke(app, ["membership", "--model-file", str(model_file), "--data", str(data),
                            "--recipe", RECIPE, "--shadows", "4", "--attack", "loss",
                            "--attack", "lira:fixed_variance=true", "--json", str(out),
                            "--roc", str(roc)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["results"]
    assert [row["attack"] for row in rows] == ["loss", "lira:fixed_variance=true"]
    assert all(row["status"] == "ok" and row["queries"] == 400 for row in rows)
    assert rows[1]["auc"] > 0.6 and rows[1]["info"]["recipe"] == RECIPE
    assert roc.stat().st_size > 10_000
    assert "smallest false-positive rate one can tell is 0.50%" in " ".join(r.output.split())


def test_bad_input_is_refused_with_the_field_named(owner: Any, tmp_path: Path) -> None:
    model_file, data = owner
    base = ["membership", "--model-file", str(model_file), "--data", str(data)]
    cases = [
        (["--attack", "lira-ultra"], "Unknown membership attack 'lira-ultra'"),
        (["--attack", "lira:shadows=1"], "shadows"),
        (["--attack", "lira:depth=3"], "key one of"),
        (["--attack", "lira"], "--recipe"),
        (["--attack", "lira", "--recipe", "xgboost"], "recipe"),
        (["--attack", "loss", "--roc", str(tmp_path / "roc.gif")], "--roc"),
    ]
    for extra, message in cases:
        r = runner.invoke(app, [*base, *extra])
        assert isinstance(r.exception, ConfigError), (extra, r.output)
        assert message in str(r.exception), (extra, str(r.exception))
    bad = tmp_path / "bad.npz"
    with np.load(data) as d:
        np.savez(bad, members=d["members"], member_labels=d["member_labels"],
                 nonmembers=d["non_members"])
    r = runner.invoke(app, ["membership", "--model-file", str(model_file), "--data", str(bad)])
    assert isinstance(r.exception, ConfigError)
    assert "unknown array 'nonmembers'" in str(r.exception) and "non_members (" in str(
        r.exception)
    # Without the attacker's population RMIA cannot run; the others still do.
    thin = tmp_path / "thin.npz"
    with np.load(data) as d:
        np.savez(thin, **{k: d[k] for k in ("members", "member_labels", "non_members",
                                            "non_member_labels")})
    out = tmp_path / "thin.json"
    r = runner.invoke(app, ["membership", "--model-file", str(model_file), "--data", str(thin),
                            "--attack", "loss", "--attack", "rmia", "--recipe", RECIPE,
                            "--shadows", "2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    loss, rmia = json.loads(out.read_text())["results"]
    assert loss["status"] == "ok" and rmia["status"] == "not run"
    assert "population holds 0" in rmia["reason"] and rmia["queries"] == 0
    r = runner.invoke(app, ["membership", "--victim", "tabular-mlp", "--model-file",
                            str(model_file), "--data", str(data)])
    assert isinstance(r.exception, ConfigError)
    assert "Give --victim (built-in) or --model-file" in str(r.exception)


def test_over_http_each_policy_meets_the_attacks_it_allows(owner: Any, tmp_path: Path
                                                           ) -> None:
    model_file, data = owner
    with np.load(data) as d:
        every = np.concatenate([d["members"], d["non_members"], d["population"]])
    shields = build_gateway({
        "audit_url": f"sqlite:///{tmp_path}/a.db",
        "tiers": {"full": {"max_batch": 100}, "labels": {"policy": "label"}},
        "models": [{"file": str(model_file), "name": "ledger",
                    "classes": ["0", "1", "2", "3"], "low": every.min(0).tolist(),
                    "high": every.max(0).tolist()}]})
    full = shields[0].store.create_key("full")[0]
    labels = shields[0].store.create_key("labels")[0]
    out = tmp_path / "m.json"
    with live_app(create_app(shields)) as client:
        base = ["membership", "--target", str(client.base_url), "--model", "ledger",
                "--model-file", str(model_file), "--data", str(data), "--recipe", RECIPE,
                "--shadows", "4", "--json", str(out)]
        r = runner.invoke(app, [*base, "--api-key", full, "--attack", "rmia:references=100"])
        assert r.exit_code == 0, r.output
        row = json.loads(out.read_text())["results"][0]
        assert row["status"] == "ok" and row["queries"] == 500 and row["auc"] > 0.6
        r = runner.invoke(app, [*base, "--api-key", labels, "--attack", "loss",
                                "--attack", "label-only:perturbations=3"])
        assert r.exit_code == 0, r.output
        loss, label_only = json.loads(out.read_text())["results"]
        assert loss["status"] == "refused" and "scores" in loss["reason"]
        assert label_only["status"] == "ok" and label_only["queries"] == 400 * 4
    for s in shields:
        s.close()
