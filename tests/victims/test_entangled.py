"""Entangled watermarks (EWE): the owner's network learns source rows with the trigger as
the target class; a student trained only on its answers to natural rows inherits that; a
model trained without the watermark does not, and verify tells them apart."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from modelshield.cli import app
from modelshield.errors import ConfigError
from modelshield.models import TorchMLPClassifier
from modelshield.victims.entangled import EntangledWatermark, embed_entangled, load_mark, snnl
from modelshield.victims.trainmark import TriggerSet
from modelshield.victims.zoo import train_mark

runner = CliRunner()


def _owner_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An owner's table: 3 classes over 12 features; training rows and natural rows a
    thief might send (never stamped with the trigger)."""
    X, y = make_classification(1600, 12, n_informative=12, n_redundant=0, n_classes=3,
                               n_clusters_per_class=1, class_sep=1.5, random_state=seed)
    return X[:1000], y[:1000], X[1000:]


def test_snnl_is_high_when_the_groups_are_entangled_and_low_when_apart() -> None:
    rng = np.random.default_rng(0)
    group = torch.cat([torch.ones(16), torch.zeros(16)])
    e0, e1 = np.eye(4)[0], np.eye(4)[1]
    apart = torch.as_tensor(np.vstack([rng.normal(0, 0.05, (16, 4)) + 5 * e0,
                                       rng.normal(0, 0.05, (16, 4)) + 5 * e1]))
    mixed = torch.as_tensor(rng.normal(0, 1, (32, 4)) + 3 * (e0 + e1))
    t = torch.tensor(0.1, dtype=torch.float64)
    assert snnl(apart, group.double(), t) < 0.01
    # Fully mixed groups: each row's same-group share of neighbours is near 15/31.
    assert abs(float(snnl(mixed, group.double(), t)) - np.log(31 / 15)) < 0.5


@pytest.mark.slow
def test_the_watermark_is_learned_inherited_by_a_student_and_absent_without_it() -> None:
    X, y, natural = _owner_data()
    net, wm = embed_entangled(X, y, "owner-secret", hidden=(32, 32), epochs=40, w_epochs=40,
                              random_state=0)
    assert wm.source != wm.target and 1 <= len(wm.features) <= 2
    assert np.all(wm.x[:, wm.features] == wm.values)
    assert wm.success(net.predict(wm.x)) >= 0.9
    assert wm.null_rate < 0.2 and len(wm.null_rates) == 10
    clean = LogisticRegression(max_iter=2000).fit(X[:500], y[:500])
    assert np.mean(net.predict(X[500:]) == y[500:]) >= np.mean(
        clean.predict(X[500:]) == y[500:]) - 0.05
    # A thief's student, trained only on the network's scores for natural rows.
    student = TorchMLPClassifier((32,), epochs=150, random_state=1).fit(
        natural, net.predict_proba(natural))
    # The decoys: watermarks other keys would have made, never trained in.
    assert wm.decoy_x.shape == (50, 6, 12) and wm.decoy_inputs.shape == (300, 12)
    assert set(wm.decoy_targets) <= {0, 1, 2}
    own = wm.test(net.predict(wm.x), net.predict(wm.decoy_inputs))
    assert own.decoy_rate is not None and own.decoy_rate < 0.5 and own.decoys_above == 0
    stolen = wm.test(student.predict(wm.x), student.predict(wm.decoy_inputs))
    # The decoy test is the stricter: it calibrates on the student itself.
    assert stolen.p_value <= 1e-3 and stolen.p_decoy is not None and stolen.p_family < 1e-9
    assert stolen.p_value == max(stolen.p_family, stolen.p_decoy) and stolen.decoy_queries == 300
    q = wm.queries_to(student.predict(wm.x), 0.05, student.predict(wm.decoy_inputs))
    assert q is not None and q < 100
    # Models trained without the watermark, on the owner's own rows, are not named.
    for other in (TorchMLPClassifier((32, 32), epochs=60, random_state=7).fit(X, y), clean):
        assert wm.test(other.predict(wm.x), other.predict(wm.decoy_inputs)).p_value > 1e-3


def test_decoys_are_keys_on_any_pair_but_never_the_real_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoy is what another key would have drawn, on any pair of classes (the real
    key's pair too: a model that favours that pair must favour its decoys alike); a decoy
    that draws the real key itself draws again."""
    import modelshield.victims.entangled as entangled

    X, y, _ = _owner_data()
    choose = entangled._choose
    draws: list[tuple[int, int, np.ndarray, np.ndarray]] = []

    def first_decoy_is_the_real_key(rng: np.random.Generator, *args: object,
                                    **kw: object) -> tuple[int, int, np.ndarray, np.ndarray]:
        out = draws[0] if len(draws) == 1 else choose(rng, *args, **kw)  # type: ignore[arg-type]
        draws.append(out)
        return out

    monkeypatch.setattr(entangled, "_choose", first_decoy_is_the_real_key)
    _, wm = embed_entangled(X, y, "owner-secret", hidden=(16,), epochs=5, w_epochs=1,
                            n_null=2, n_decoys=30, random_state=0)
    real = draws[0]
    # The real key, 30 decoys, and one more draw for the decoy that drew the real key.
    assert len(draws) == 32 and draws[1] is real
    decoys = draws[2:]
    assert not any(d[0] == real[0] and d[1] == real[1] and np.array_equal(d[2], real[2])
                   for d in decoys)
    assert any((d[0], d[1]) == (real[0], real[1]) for d in decoys)  # the real pair is drawn
    assert [d[1] for d in decoys] == list(wm.decoy_targets)
    for d, rows in zip(decoys, wm.decoy_x, strict=True):
        assert np.all(rows[:, d[2]] == d[3])


def test_queries_to_counts_the_prefix_that_reaches_alpha() -> None:
    wm = EntangledWatermark(np.zeros((40, 2)), 0, 1, 3, np.array([0]), np.array([1.0]),
                            (0.02, 0.05, 0.1, 0.04))
    labels = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1] * 4)
    for alpha in (0.05, 1e-3, 1e-5):
        n = wm.queries_to(labels, alpha)
        assert n is not None and wm.test(labels[:n]).p_value <= alpha
        assert n == 1 or wm.test(labels[:n - 1]).p_value > alpha
    assert wm.queries_to(labels, 0.05) <= wm.queries_to(labels, 1e-5)  # type: ignore[operator]
    assert wm.queries_to(np.zeros(40, dtype=int), 0.5) is None
    assert wm.test(labels).matches == 32


def test_the_test_allows_for_how_much_independent_models_differ() -> None:
    """Models trained without the watermark answer it at rates from 0 to 0.6: a suspect at
    the top of that spread is not named, as a binomial at their mean would name it."""
    from scipy import stats

    rates = (0.0, 0.01, 0.03, 0.0, 0.0, 0.02, 0.0, 0.6, 0.07, 0.01)
    wm = EntangledWatermark(np.zeros((90, 2)), 0, 1, 10, np.array([0]), np.array([1.0]), rates)
    like_the_tree = np.array([1] * 54 + [0] * 36)
    assert wm.test(like_the_tree).p_value > 1e-3
    assert stats.binom.sf(53, 90, np.mean(rates)) < 1e-30
    assert wm.test(np.ones(90, dtype=int)).p_value < wm.test(like_the_tree).p_value
    tight = EntangledWatermark(np.zeros((90, 2)), 0, 1, 10, np.array([0]), np.array([1.0]),
                               (0.05,) * 10)  # no spread: at least a binomial's
    a, b = tight.null_beta()
    assert abs(a / (a + b) - 0.05) < 1e-12 and a + b < 91


def _with_decoys(rates: list[float], rows: int = 6) -> EntangledWatermark:
    """A watermark of 90 inputs (target 1) with one decoy per rate, all of target 1."""
    return EntangledWatermark(np.zeros((90, 2)), 0, 1, 3, np.array([0]), np.array([1.0]),
                              (0.02, 0.01, 0.03, 0.02), np.zeros((len(rates), rows, 2)),
                              np.ones(len(rates), dtype=np.int64))


def _decoy_labels(rates: list[float], rows: int = 6) -> np.ndarray:
    return np.concatenate([(np.arange(rows) < round(r * rows)).astype(int) for r in rates])


def test_the_decoys_calibrate_on_the_suspect_itself() -> None:
    """A suspect that answers stamped rows as the target whatever the key (the rate of a
    model that learned that stamps mean the target) is not named, though the independent
    models' null alone would name it; a suspect that singles out the real key's trigger is."""
    rates = [0.0] * 30 + [0.5] * 10 + [0.33] * 10
    wm = _with_decoys(rates)
    stamp_lover = np.array([1] * 36 + [0] * 54)  # 40%: as high as its decoys
    r = wm.test(stamp_lover, _decoy_labels(rates))
    assert r.p_family < 1e-9 and r.p_decoy is not None and r.p_decoy > 0.05
    assert r.p_value == r.p_decoy and r.decoys_above == 10 and r.decoys == 50
    assert abs(r.p_rank - 11 / 51) < 1e-12  # type: ignore[operator]
    thief = np.array([1] * 80 + [0] * 10)
    low = [0.0] * 45 + [1 / 6] * 5
    t = wm.test(thief, _decoy_labels(low))
    assert t.p_value < 1e-6 and t.decoys_above == 0 and t.p_rank == 1 / 51
    # A suspect that never answers a decoy's target: the mean is floored at half a hit.
    a, b = wm.decoy_beta(_decoy_labels([0.0] * 50))
    assert abs(a / (a + b) - 0.5 / 300) < 1e-12
    assert "50 decoy watermarks" in t.summary()
    with pytest.raises(ValueError, match="decoy_labels"):
        wm.test(thief, np.zeros(7, dtype=int))
    # Without decoy answers, the test is the independent models' alone.
    assert wm.test(stamp_lover).p_decoy is None


def test_save_load_and_bad_input(tmp_path: Path) -> None:
    wm = EntangledWatermark(np.ones((4, 3)), 0, 2, 3, np.array([1]), np.array([9.0]), (0.05, 0.1))
    wm.save(tmp_path / "w.npz")
    back = load_mark(tmp_path / "w.npz")
    assert isinstance(back, EntangledWatermark) and back.target == 2 and back.null_rates == (0.05, 0.1)
    assert back.decoy_x.shape == (0, 0, 0) and back.decoy_inputs.shape == (0, 3)
    with_decoys = _with_decoys([0.1, 0.2])
    with_decoys.save(tmp_path / "d.npz")
    back = load_mark(tmp_path / "d.npz")
    assert isinstance(back, EntangledWatermark) and back.decoy_x.shape == (2, 6, 2)
    assert np.array_equal(back.decoy_targets, [1, 1])
    np.savez(tmp_path / "skew.npz", **{**dict(np.load(tmp_path / "d.npz")),
                                        "decoy_targets": np.ones(3, dtype=np.int64)})
    with pytest.raises(ConfigError, match="decoy_x"):
        load_mark(tmp_path / "skew.npz")
    TriggerSet(np.zeros((2, 3)), np.array([0, 1]), 2).save(tmp_path / "t.npz")
    assert isinstance(load_mark(tmp_path / "t.npz"), TriggerSet)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ConfigError, match="not a watermark file"):
        load_mark(tmp_path / "bad.npz")
    with pytest.raises(ConfigError, match="not an entangled watermark"):
        EntangledWatermark.load(tmp_path / "t.npz")
    X, y, _ = _owner_data()
    with pytest.raises(ConfigError, match="choice"):
        embed_entangled(X, y, "k", choice="best", epochs=1, w_epochs=1)
    with pytest.raises(ConfigError, match="decoy_rows"):
        embed_entangled(X, y, "k", decoy_rows=1, epochs=1, w_epochs=1)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        embed_entangled(X[:100], y[:100], "k")


def test_verify_tells_a_stolen_copy_of_the_builtin_ewe_victim_from_an_independent_one(
        tmp_path: Path) -> None:
    from modelshield.victims import load_victim

    v = load_victim("digits-mlp-ewe")
    wm = train_mark("digits-mlp-ewe")
    assert isinstance(wm, EntangledWatermark)
    student = TorchMLPClassifier((64,), epochs=100, random_state=3).fit(
        v.pool, v.model.predict(v.pool).probabilities)
    joblib.dump(student, tmp_path / "stolen.joblib")
    # Independent: the same student trained on the owner's rows with the owner's labels.
    indep = TorchMLPClassifier((64,), epochs=100, random_state=3).fit(
        v.X_train, v.predict_labels(v.X_train))
    joblib.dump(indep, tmp_path / "indep.joblib")
    out = tmp_path / "v.json"
    r = runner.invoke(app, ["verify", "--suspect", str(tmp_path / "stolen.joblib"),
                            "--trigger-set", "digits-mlp-ewe", "--json", str(out)])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())["trigger_set"]
    assert got["matched"] and got["kind"] == "entangled watermark"
    assert got["evidence"].startswith("supporting") and "decoy" in got["evidence"]
    assert "not proof" in " ".join(r.output.split())
    assert got["p_decoy"] <= 1e-3 and got["p_family"] <= 1e-3 and got["p_rank"] == 1 / 51
    assert got["decoy_queries"] == 300 and got["queries"] == got["triggers"] + 300
    assert got["queries_to_95"] is not None and got["queries_to_95"] < 100
    wm.save(tmp_path / "w.npz")
    r = runner.invoke(app, ["verify", "--suspect", str(tmp_path / "indep.joblib"),
                            "--trigger-set", str(tmp_path / "w.npz"), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert not json.loads(out.read_text())["trigger_set"]["matched"]
    with pytest.raises(ConfigError, match="without a watermark"):
        train_mark("digits-mlp")
