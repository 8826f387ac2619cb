"""The serve-time watermark (DAWN): keyed, deterministic, per account, consistent with the
scores, rebuilt from the audit log; and its test never names a model built without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelshield.answer import ApiSpec, Prediction
from modelshield.audit.ownership import logged_queries
from modelshield.defenses.watermark import (
    ServeWatermark,
    WatermarkSet,
    control_test,
    joint_set,
    label_test,
    watermark_set,
)
from modelshield.errors import ConfigError
from modelshield.oracle import ShieldOracle
from modelshield.serve.factory import build_shield
from modelshield.victims import Victim

SECRET = "watermark-secret-for-the-tests"


def spec(k: int = 4, d: int = 6) -> ApiSpec:
    return ApiSpec(n_features=d, classes=tuple(str(i) for i in range(k)), low=np.zeros(d),
                   high=np.full(d, 10.0))


def test_the_choice_is_keyed_deterministic_and_robust_to_jitter() -> None:
    wm = ServeWatermark(SECRET, spec(), rate=0.05)
    x = np.random.default_rng(0).uniform(0, 10, (20_000, 6))
    chosen, offset = wm.draws("acct-a", x)
    share = chosen.mean()
    assert 0.04 < share < 0.06  # the rate, within sampling error (sd 0.0015)
    assert set(np.unique(offset)) == {1, 2, 3}
    again, offset2 = wm.draws("acct-a", x)
    assert (again == chosen).all() and (offset2 == offset).all()
    # Jitter of 0.1% of the range keeps nearly every input in its cell, so its answer.
    jitter = x + np.random.default_rng(1).normal(0, 0.01, x.shape)
    assert (wm.draws("acct-a", jitter)[0] == chosen).mean() > 0.99
    # Another account's cells are its own; another secret chooses others again.
    other = wm.draws("acct-b", x)[0]
    assert (other & chosen).mean() < 2 * share * share + 0.002
    assert (ServeWatermark("another-secret-entirely", spec(), rate=0.05).draws("acct-a", x)[0]
            & chosen).mean() < 2 * share * share + 0.002


def test_a_watermarked_answer_names_another_class_with_scores_to_match() -> None:
    wm = ServeWatermark(SECRET, spec(), rate=0.2)
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 10, (500, 6))
    probs = rng.dirichlet(np.ones(4), 500)
    out, n = wm.apply("acct", x, Prediction(probs))
    chosen, offset = wm.draws("acct", x)
    assert n == chosen.sum() > 50
    changed = out.labels != Prediction(probs).labels
    assert (changed == chosen).all()
    assert (out.labels[chosen] == (probs.argmax(1)[chosen] + offset[chosen]) % 4).all()
    assert np.allclose(np.sort(out.probabilities, 1), np.sort(probs, 1))  # a permutation
    assert (out.probabilities[~chosen] == probs[~chosen]).all()


@pytest.mark.parametrize("k", [2, 5])
def test_the_test_is_exact_for_models_built_without_the_answers(k: int) -> None:
    """Suspects blind to the key: p-values no smaller than uniform (about 5% at 0.05)."""
    wm = ServeWatermark(SECRET, spec(k), rate=0.05)
    rng = np.random.default_rng(3)

    class Model:
        def predict(self, x: np.ndarray) -> Prediction:
            return Prediction(np.eye(k)[(x[:, 0] > 5).astype(int) % k])

    x = rng.uniform(0, 10, (4000, 6))
    small = 0
    trials = 200
    for t in range(trials):
        ws = watermark_set(wm, f"acct-{t}", x, Model())
        # An independent model: our labels, except on a random 30% of inputs.
        def suspect(rows: np.ndarray) -> np.ndarray:
            y = Model().predict(rows).labels
            flip = rng.random(len(rows)) < 0.3
            return np.where(flip, rng.integers(0, k, len(rows)), y)

        res = label_test(suspect(ws.x), ws, k) if k > 2 else \
            control_test(suspect(ws.x), suspect(ws.control_x), ws)
        small += res.p_value <= 0.05
    assert small / trials <= 0.09
    # A copy that learned the watermark is named.
    ws = watermark_set(wm, "thief", x, Model())
    res = label_test(ws.labels, ws, k) if k > 2 else \
        control_test(ws.labels, ws.control_model_labels, ws)
    assert res.p_value < 1e-10


@pytest.mark.parametrize("k", [2, 5])
def test_accounts_tested_together_name_a_copy_made_over_many_keys(k: int) -> None:
    """An attacker who spreads its queries over 10 keys leaves a tenth of its marks on each:
    the union of their sets names the copy where no key alone does, and stays exact for
    suspects blind to the keys."""
    wm = ServeWatermark(SECRET, spec(k), rate=0.01)

    class Model:
        def predict(self, x: np.ndarray) -> Prediction:
            return Prediction(np.eye(k)[(x[:, 0] > 5).astype(int) % k])

    rng = np.random.default_rng(4)
    x = rng.uniform(0, 10, (1500, 6))
    sets = [watermark_set(wm, f"ring-{i}", part, Model())
            for i, part in enumerate(np.array_split(x, 10))]
    together = joint_set(sets)
    assert together.account == "+".join(f"ring-{i}" for i in range(10))
    assert len(together.x) == sum(len(s.x) for s in sets) and together.queries == 1500

    def test(labels: np.ndarray, control: np.ndarray, ws: WatermarkSet) -> float:
        return (label_test(labels, ws, k) if k > 2 else control_test(labels, control, ws)
                ).p_value

    # The copy answers every input as it was answered (marks included).
    copy = [test(s.labels, s.control_model_labels, s) for s in sets]
    joint = test(together.labels, together.control_model_labels, together)
    assert min(copy) * 11 > 1e-6 and joint * 11 <= 1e-6
    # Suspects blind to the keys: the joint p-value is no smaller than uniform.
    small = 0
    for _ in range(200):
        def blind(rows: np.ndarray) -> np.ndarray:
            y = Model().predict(rows).labels
            return np.where(rng.random(len(rows)) < 0.3, rng.integers(0, k, len(rows)), y)

        small += test(blind(together.x), blind(together.control_x), together) <= 0.05
    assert small / 200 <= 0.09


def config(tmp: Path, **tier: object) -> dict[str, object]:
    return {"model": {"builtin": "wine-tree"}, "audit_url": f"sqlite:///{tmp}/a.db",
            "watermark_secret": SECRET,
            "tiers": {"pro": {"watermark": {"rate": 0.1}, **tier}, "plain": {}}}


def test_the_gateway_watermarks_only_its_tier_and_the_log_rebuilds_the_set(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    v = victims["wine-tree"]
    shield = build_shield(config(tmp_path, policy="top-k:1"))
    key, record = shield.store.create_key("pro")
    plain, _ = shield.store.create_key("plain")
    x = v.spec.uniform(400, np.random.default_rng(4))
    answer = ShieldOracle(shield, key).query(x)
    truth = v.predict_labels(x)
    wm = shield.watermarks["pro"]
    chosen, _ = wm.draws(record.key_id, x)
    assert ((answer.labels != truth) == chosen).all() and chosen.sum() > 20
    assert np.nanargmax(answer.probabilities, 1).tolist() == answer.labels.tolist()
    assert (ShieldOracle(shield, plain).query(x).labels == truth).all()
    rows, given = logged_queries(shield.store, record.key_id, shield.spec.name)
    ws = watermark_set(wm, record.key_id, rows, v.model, answered=given)
    assert len(ws.x) == len(np.unique(np.array(wm.fingerprints(x[chosen]), dtype=object)))
    assert (ws.labels == v.predict_labels(ws.x)).sum() == 0
    decisions = [json.loads(r["decision"]) for r in shield.store.records(key_id=record.key_id)]
    assert decisions[0]["watermarked"] == chosen.sum()
    shield.close()


def test_config_refuses_what_would_not_work(tmp_path: Path) -> None:
    bad = config(tmp_path)
    bad.pop("watermark_secret")
    with pytest.raises(ConfigError, match="watermark_secret"):
        build_shield(bad)
    with pytest.raises(ConfigError, match="leaf would show"):
        build_shield(config(tmp_path, policy="leaf-id"))
    with pytest.raises(ConfigError, match=r"tiers\.pro\.watermark\.rate"):
        build_shield(config(tmp_path, watermark={"rate": 0.9}))
    lm = config(tmp_path)
    lm["model"] = {"lm": "lm-tiny"}
    with pytest.raises(ConfigError, match="no classes to label"):
        build_shield(lm)
