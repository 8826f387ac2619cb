"""Every detector: quiet on benign natural traffic, flags the pattern it is built for."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from modelshield.defenses.config import load_config
from modelshield.defenses.detectors import DETECTORS, make_detector
from modelshield.errors import ConfigError
from modelshield.serve.factory import build_shield
from modelshield.victims import Victim


def stream(det, victim: Victim, x: np.ndarray, batch: int = 5):  # type: ignore[no-untyped-def]
    flag = None
    for i in range(0, len(x), batch):
        part = x[i : i + batch]
        flag = det.observe("acct", part, victim.predict(part)) or flag
    return flag


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_benign_natural_traffic_with_repeats_is_not_flagged(name: str,
                                                            victims: dict[str, Victim]) -> None:
    v = victims["digits-mlp"]
    det = make_detector(name)
    det.calibrate(v.calibration, v.predict)
    rng = np.random.default_rng(0)
    honest = v.honest[rng.permutation(len(v.honest))]
    assert stream(det, v, honest) is None


def test_sweep_flags_bisection_not_a_grid_of_values(victims: dict[str, Victim]) -> None:
    v = victims["breast-cancer-lr"]
    det = make_detector("sweep")
    det.calibrate(v.calibration, v.predict)
    rows = []
    for i in range(8):  # bisect between pairs of records, as Lowd-Meek does
        a, b = v.X_test[2 * i], v.X_test[2 * i + 1]
        rows += [a, b]
        for _ in range(10):
            mid = (a + b) / 2
            rows.append(mid)
            a, b = (mid, b) if np.random.default_rng(i).random() < 0.5 else (a, mid)
    flag = stream(det, v, np.asarray(rows))
    assert flag is not None and flag.detector == "sweep"
    grid = []  # a what-if user stepping one field through values: no line search
    for i in range(10):
        for t in np.linspace(v.spec.low[0], v.spec.high[0], 10):
            row = v.X_test[i].copy()
            row[0] = t
            grid.append(row)
    assert stream(make_detector("sweep"), v, np.asarray(grid)) is None


def test_boundary_flags_queries_at_the_decision_boundary(victims: dict[str, Victim]) -> None:
    v = victims["digits-mlp"]
    det = make_detector("boundary")
    det.calibrate(v.calibration, v.predict)
    probs = v.predict(v.pool).probabilities
    top2 = np.sort(probs, axis=1)[:, -2:]
    near = v.pool[(top2[:, 1] - top2[:, 0]) < 0.2]
    assert len(near) >= 60
    assert stream(det, v, near[:100]) is not None


def test_ood_flags_uniform_noise(victims: dict[str, Victim]) -> None:
    v = victims["digits-mlp"]
    det = make_detector("ood")
    det.calibrate(v.calibration, v.predict)
    noise = np.random.default_rng(0).uniform(0, 16, (100, 64))
    assert stream(det, v, noise).detector == "ood"  # type: ignore[union-attr]


def test_prada_flags_a_stream_of_tiny_synthetic_steps(victims: dict[str, Victim]) -> None:
    v = victims["digits-mlp"]
    det = make_detector("prada")
    det.calibrate(v.calibration, v.predict)
    rng = np.random.default_rng(0)
    seeds = v.X_test[:10]
    steps = np.concatenate([seeds + 0.01 * rng.standard_normal(seeds.shape) * (k % 7 + 1) ** 3
                            for k in range(30)])
    assert stream(det, v, steps) is not None


def test_volume_flags_past_its_threshold(victims: dict[str, Victim]) -> None:
    v = victims["digits-mlp"]
    det = make_detector("volume", max_rows=50)
    assert stream(det, v, v.X_test[:49]) is None
    assert stream(det, v, v.X_test[:5]) is not None


def test_unknown_detector_parameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="detector 'volume': unknown parameter 'limit'"):
        make_detector("volume", limit=3)


def test_a_tier_sets_detector_parameters_and_bad_ones_are_named(tmp_path: Path) -> None:
    shield = build_shield({
        "audit_url": f"sqlite:///{tmp_path}/a.db",
        "tiers": {"t": {"detectors": ["sweep", {"volume": {"max_rows": 800}}]}}})
    sweep, volume = shield.detectors["t"]
    assert sweep.name == "sweep" and volume.name == "volume"
    assert volume.max_rows == 800  # type: ignore[attr-defined]
    shield.close()
    for entry, message in [
            ({"volume": {"max_row": 8}}, "unknown parameter 'max_row'; choose from max_rows"),
            ({"volume": {"max_rows": -1}}, "max_rows must be a whole number >= 0; got -1"),
            ({"ood": {"factor": "low"}}, "factor must be a number >= 0"),
            ({"ood": {"alpha": 0.1}}, "unknown parameter 'alpha'"),
            ({"volume": 3}, "parameters must be a mapping"),
            ({"a": {}, "b": {}}, "one name mapped to its parameters"),
            ("nope", "unknown detector 'nope'")]:
        with pytest.raises(ConfigError, match=re.escape("tiers.t.detectors: ") + ".*"
                           + re.escape(message)):
            load_config({"tiers": {"t": {"detectors": [entry]}}})


def test_prada_state_stays_bounded(victims: dict[str, Victim]) -> None:
    """However much an account sends, PRADA keeps at most max_set rows per class."""
    v = victims["digits-mlp"]
    det = make_detector("prada", max_set=30)
    x = np.random.default_rng(0).uniform(0, 16, (400, 64))
    stream(det, v, x, batch=20)
    for c in range(10):
        assert len(det.state.rows(f"prada:acct:g{c}", 64)) <= 30
