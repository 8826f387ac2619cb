"""The train-time trigger set (Adi et al. 2018): the marked model answers its keyed triggers;
a model built without them matches each with chance 1/k, and verify says so."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from typer.testing import CliRunner

from modelshield.cli import app
from modelshield.errors import ConfigError
from modelshield.victims import load_victim
from modelshield.victims.trainmark import TriggerSet, trigger_test
from modelshield.victims.zoo import builtin_trigger_set

runner = CliRunner()


def test_the_marked_victim_answers_its_triggers_and_keeps_its_accuracy() -> None:
    marked, plain = load_victim("digits-mlp-wm"), load_victim("digits-mlp")
    triggers = builtin_trigger_set("digits-mlp-wm")
    assert len(triggers.x) == 50 and (triggers.x == np.round(triggers.x)).all()
    assert np.mean(marked.predict_labels(triggers.x) == triggers.labels) >= 0.98
    acc = [np.mean(v.predict_labels(v.X_test) == v.y_test) for v in (marked, plain)]
    assert acc[0] > acc[1] - 0.02
    assert trigger_test(marked.predict_labels(triggers.x), triggers).p_value < 1e-30
    assert trigger_test(plain.predict_labels(triggers.x), triggers).p_value > 1e-3
    with pytest.raises(ConfigError, match="has no trigger set"):
        builtin_trigger_set("digits-mlp")


def test_the_trigger_test_is_exact_for_models_blind_to_the_key() -> None:
    rng = np.random.default_rng(0)
    small = 0
    for _ in range(400):
        triggers = TriggerSet(np.zeros((30, 2)), rng.integers(0, 4, 30), 4)
        blind = np.full(30, 2)  # any fixed answers: the keyed labels are independent of them
        small += trigger_test(blind, triggers).p_value <= 0.05
    assert small / 400 <= 0.08


def test_verify_names_a_copy_of_the_marked_model_and_not_another(tmp_path: Path) -> None:
    marked = load_victim("digits-mlp-wm").model.estimator
    joblib.dump(marked, tmp_path / "copy.joblib")
    joblib.dump(load_victim("digits-mlp", seed=1).model.estimator, tmp_path / "other.joblib")
    out = tmp_path / "v.json"
    r = runner.invoke(app, ["verify", "--suspect", str(tmp_path / "copy.joblib"),
                            "--trigger-set", "digits-mlp-wm", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["trigger_set"]["matched"] and "match" in r.output
    triggers = builtin_trigger_set("digits-mlp-wm")
    triggers.save(tmp_path / "t.npz")
    r = runner.invoke(app, ["verify", "--suspect", str(tmp_path / "other.joblib"),
                            "--trigger-set", str(tmp_path / "t.npz"), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert not json.loads(out.read_text())["trigger_set"]["matched"]
    assert "no evidence" in r.output
    (tmp_path / "bad.npz").write_bytes(b"not a trigger set")
    r = runner.invoke(app, ["verify", "--suspect", str(tmp_path / "other.joblib"),
                            "--trigger-set", str(tmp_path / "bad.npz")])
    assert isinstance(r.exception, ConfigError) and "not a watermark file" in str(r.exception)
    r = runner.invoke(app, ["verify", "--suspect", str(tmp_path / "other.joblib")])
    assert isinstance(r.exception, ConfigError) and "--trigger-set" in str(r.exception)
