"""Calibration belongs to the owner: detectors set from the owner's natural data for the
tier's false-positive rate, honest customers of every archetype left alone, attacks still
caught, and a tier with detectors but no data refused at start."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from modelshield.cli import app
from modelshield.data.honest import ARCHETYPES, honest_accounts
from modelshield.defenses.detectors import (
    LOOK_RATIO,
    beta_binomial_fit,
    fresh_rows,
    look_alpha,
)
from modelshield.defenses.state import MemoryState
from modelshield.errors import ConfigError, Denied
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from modelshield.victims.loaders import load_calibration
from tests.servers import live_app

runner = CliRunner()
DETECTORS = ["sweep", "boundary", "ood", "prada", {"volume": {"max_rows": 20000}}]


# -- the statistics ----------------------------------------------------------------------
def test_all_looks_together_spend_at_most_alpha() -> None:
    spent, before = 0.0, 0
    for after in range(1, 200_000, 7):
        budget = look_alpha(1e-3, 50, before, after)
        spent += budget or 0.0
        before = after
    assert 0.5e-3 < spent <= 1e-3
    # a batch that crosses several checkpoints is one look
    assert look_alpha(1e-3, 50, 0, 50 * LOOK_RATIO ** 5) is not None
    assert look_alpha(1e-3, 50, 49, 49) is None and look_alpha(1e-3, 50, 0, 49) is None


def test_beta_binomial_fit_keeps_the_spread_of_clustered_accounts() -> None:
    rng = np.random.default_rng(0)
    n = np.full(40, 100)
    k_binomial = rng.binomial(n, 0.1)
    k_clustered = rng.binomial(n, rng.beta(0.5, 4.5, 40))  # same mean, accounts differ
    _, a1, b1 = beta_binomial_fit(k_binomial, n)
    _, a2, b2 = beta_binomial_fit(k_clustered, n)
    rho1, rho2 = 1 / (a1 + b1 + 1), 1 / (a2 + b2 + 1)
    assert rho1 < 0.02 < 0.08 < rho2


def test_repeated_rows_count_once() -> None:
    state, x = MemoryState(), np.arange(12, dtype=float).reshape(4, 3)
    assert fresh_rows(state, "a", x[[0, 1, 1, 2]]).tolist() == [True, True, False, True]
    assert fresh_rows(state, "a", x[[2, 3]]).tolist() == [False, True]
    assert fresh_rows(state, "b", x[[2]]).tolist() == [True]  # per account
    assert fresh_rows(state, "c", x, max_seen=0).all()  # past the cap every row is new


# -- honest archetypes -------------------------------------------------------------------
def test_archetypes_are_reproducible_and_stay_in_the_domain() -> None:
    X = np.random.default_rng(0).integers(0, 17, (200, 8)).astype(float)
    for name in ARCHETYPES:
        a = honest_accounts(X, name, 3, seed=1, low=np.zeros(8), high=np.full(8, 16),
                            integer=True)
        b = honest_accounts(X, name, 3, seed=1, low=np.zeros(8), high=np.full(8, 16),
                            integer=True)
        rows = np.concatenate([r for acc in a for r in acc.requests])
        assert np.array_equal(rows, np.concatenate([r for acc in b for r in acc.requests]))
        assert rows.min() >= 0 and rows.max() <= 16 and np.array_equal(rows, np.round(rows))
        assert all(np.all(np.diff(acc.times) >= 0) for acc in a)
    batch = honest_accounts(X, "batch", 2, seed=0)[0]
    assert max(len(r) for r in batch.requests) >= 100
    assert max(len(r) for r in batch.chunked(10).requests) == 10
    assert batch.chunked(10).rows == batch.rows
    with pytest.raises(ConfigError, match="unknown honest archetype 'bulk'"):
        honest_accounts(X, "bulk", 1)


# -- the owner's own models, served from files -------------------------------------------
@pytest.fixture(scope="module")
def owned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three models the owner trained (not in the zoo), saved as files, with the owner's
    held-out rows: half for calibration (written as .npz, .csv and .parquet), half for
    the customers the tests play."""
    folder = tmp_path_factory.mktemp("owned")
    X, y = make_classification(n_samples=2400, n_features=12, n_informative=6,
                               n_classes=3, n_clusters_per_class=1, random_state=5)
    X = np.round(X, 3)
    train, calib, honest = X[:1200], X[1200:1800], X[1800:]
    models = {
        "pipeline": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "mlp": make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=2000, early_stopping=True,
                                                             random_state=0)),
        "boosted": HistGradientBoostingClassifier(max_iter=60, random_state=0),
    }
    files = {}
    for name, est in models.items():
        est.fit(train, y[:1200])
        files[name] = folder / f"{name}.joblib"
        joblib.dump(est, files[name])
    np.savez(folder / "calib.npz", X=calib)
    header = ",".join(f"f{i}" for i in range(12)) + ",label"
    np.savetxt(folder / "calib.csv", np.column_stack([calib, y[1200:1800]]), delimiter=",",
               header=header, comments="")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({f"f{i}": calib[:, i] for i in range(12)}), folder / "calib.parquet")
    return {"folder": folder, "files": files, "honest": honest, "X": X,
            "low": X.min(0).tolist(), "high": X.max(0).tolist()}


def owner_config(owned: dict[str, Any], name: str, tmp: Path, calibration: str | None,
                 **tier: Any) -> dict[str, Any]:
    model = {"file": str(owned["files"][name]), "name": name, "classes": ["a", "b", "c"],
             "low": owned["low"], "high": owned["high"]}
    if calibration:
        model["calibration"] = str(owned["folder"] / calibration)
    return {"model": model, "audit_url": f"sqlite:///{tmp}/{name}.db",
            "tiers": {"t": {"detectors": DETECTORS, "on_flag": "deny", "max_batch": 1000,
                            **tier}}}


def test_detectors_without_calibration_data_refuse_to_start(owned: dict[str, Any],
                                                            tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.calibration: tier 't' has the detectors "
                                          r"sweep, boundary, ood, prada"):
        build_shield(owner_config(owned, "pipeline", tmp_path, None))
    # volume alone needs no data
    build_shield(owner_config(owned, "pipeline", tmp_path, None,
                              detectors=[{"volume": {"max_rows": 10}}])).close()


@pytest.mark.parametrize("name", ["pipeline", "mlp", "boosted"])
def test_honest_customers_of_every_kind_are_not_suspended(owned: dict[str, Any], name: str,
                                                          tmp_path: Path) -> None:
    """The owner's held-out rows, sent as each kind of customer sends them, through a
    deny tier calibrated on the owner's other rows: no account is suspended."""
    shield = build_shield(owner_config(owned, name, tmp_path, "calib.npz"))
    try:
        suspended = []
        for i, archetype in enumerate(ARCHETYPES):
            for acc in honest_accounts(owned["honest"], archetype, 4, seed=10 + i):
                key = shield.store.create_key("t")[0]
                try:
                    for req in acc.chunked(1000).requests:
                        shield.handle(key, req)
                except Denied as exc:
                    suspended.append((archetype, exc.detail))
        assert suspended == []
    finally:
        shield.close()


def test_attacks_are_still_caught_on_the_owners_model(owned: dict[str, Any],
                                                      tmp_path: Path) -> None:
    shield = build_shield(owner_config(owned, "mlp", tmp_path, "calib.parquet"))
    try:
        rng = np.random.default_rng(0)
        lo, hi = np.asarray(owned["low"]), np.asarray(owned["high"])
        key = shield.store.create_key("t")[0]
        with pytest.raises(Denied, match="ood detector"):  # synthetic points, one batch
            shield.handle(key, rng.uniform(lo, hi, (40, 12)))
        key = shield.store.create_key("t")[0]
        with pytest.raises(Denied, match="sweep detector"):  # bisection between records
            for i in range(40):
                a, b = owned["honest"][2 * i], owned["honest"][2 * i + 1]
                shield.handle(key, np.stack([a, b]))
                for _ in range(8):
                    mid = (a + b) / 2
                    shield.handle(key, mid[None, :])
                    a, b = (mid, b) if rng.random() < 0.5 else (a, mid)
    finally:
        shield.close()


@pytest.mark.slow
def test_natural_rows_one_at_a_time_over_http_are_answered(owned: dict[str, Any],
                                                           tmp_path: Path) -> None:
    """The report that started this: a fresh key sending the model's own test rows, one
    per request, was suspended by prada after about 100 rows."""
    shield = build_shield(owner_config(owned, "boosted", tmp_path, "calib.csv"))
    key = shield.store.create_key("t")[0]
    with live_app(create_app([shield])) as client:
        for row in owned["honest"][:250]:
            r = client.post("/v1/models/boosted/predict", json={"inputs": [row.tolist()]},
                            headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        r = client.post("/v1/models/boosted/predict", json={"inputs": owned["honest"].tolist()},
                        headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text


def test_calibration_files_are_checked_and_errors_name_the_field(owned: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    folder = owned["folder"]
    for f in ("calib.npz", "calib.csv", "calib.parquet"):
        assert load_calibration(folder / f, 12).shape == (600, 12)
    np.savez(tmp_path / "wrong.npz", rows=np.zeros((50, 12)))
    np.savez(tmp_path / "narrow.npz", X=np.zeros((50, 5)))
    np.savez(tmp_path / "few.npz", X=np.zeros((5, 12)))
    holes = np.zeros((50, 12))
    holes[3, 4] = np.nan
    np.savez(tmp_path / "holes.npz", X=holes)
    (tmp_path / "rows.txt").write_text("1,2")
    for path, message in [
            (tmp_path / "missing.npz", "does not exist"),
            (tmp_path / "wrong.npz", "no array named 'X' (it holds rows)"),
            (tmp_path / "narrow.npz", "rows of 5 features; the model takes 12"),
            (tmp_path / "few.npz", "has 5 rows; calibration needs at least 20"),
            (tmp_path / "holes.npz", "missing or infinite values"),
            (tmp_path / "rows.txt", "is not .npz, .csv or .parquet")]:
        with pytest.raises(ConfigError, match=r"model\.calibration: .*" + message.replace(
                "(", r"\(").replace(")", r"\)")):
            load_calibration(path, 12)


# -- from the CLI ---------------------------------------------------------------------------
def test_calibrate_from_the_audit_log_leaves_flagged_keys_out(owned: dict[str, Any],
                                                              tmp_path: Path) -> None:
    cfg = owner_config(owned, "pipeline", tmp_path, "calib.npz", on_flag="alert")
    cfg_file = tmp_path / "gw.yaml"
    cfg_file.write_text(json.dumps(cfg))
    shield = build_shield(cfg)
    honest_key, attacker_key = (shield.store.create_key("t")[0] for _ in range(2))
    for row in owned["honest"][:60]:
        shield.handle(honest_key, row[None, :])
    shield.handle(honest_key, owned["honest"][:10])  # repeats are kept once
    lo, hi = np.asarray(owned["low"]), np.asarray(owned["high"])
    _, decision = shield.handle(attacker_key, np.random.default_rng(0).uniform(lo, hi, (30, 12)))
    assert decision.flags  # the attacker is flagged (alert only)
    shield.close()

    out = tmp_path / "past.npz"
    r = runner.invoke(app, ["calibrate", "--config", str(cfg_file), "--from-audit-log",
                            "--since", "1d", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["rows"] == 60 and summary["flagged_keys_left_out"] == 1
    assert summary["volumes"]["max"] == 70  # the honest key's rows, repeats included
    with np.load(out) as d:
        assert np.array_equal(np.sort(d["X"], axis=0), np.sort(owned["honest"][:60], axis=0))

    # the usual first run: the config already names the file this command writes
    fresh = tmp_path / "fresh.npz"
    cfg2 = {**cfg, "model": {**cfg["model"], "calibration": str(fresh)}}
    (tmp_path / "gw2.yaml").write_text(json.dumps(cfg2))
    r = runner.invoke(app, ["calibrate", "--config", str(tmp_path / "gw2.yaml"),
                            "--from-audit-log", "--out", str(fresh)])
    assert r.exit_code == 0 and fresh.is_file(), r.output
    assert "rows per account: median" in r.output

    r = runner.invoke(app, ["calibrate", "--config", str(cfg_file), "--from-audit-log",
                            "--since", "yesterday", "--out", str(out)])
    assert r.exit_code != 0 and "--since: 'yesterday' is not a date" in str(r.exception)

    r = runner.invoke(app, ["calibrate", "--config", str(cfg_file), "--json", "--check", "2"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    check = doc["honest_check"]["pipeline"]["t"]
    assert set(check) == {"iid", "narrow", "what-if", "batch", "repeat", "burst"}
    assert all(v["accounts"] == 2 and v["flagged"] == 0 for v in check.values())
    rows = {d["detector"]: d for d in doc["detectors"]}
    assert set(rows) == {"sweep", "boundary", "ood", "prada", "volume"}
    assert math.isclose(sum(rows[d]["alpha"] for d in ("sweep", "boundary", "ood", "prada")),
                        0.001)
    assert 0 < rows["prada"]["delta"] <= 0.9 and rows["volume"]["max_rows"] == 20000
