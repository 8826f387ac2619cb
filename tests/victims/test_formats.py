"""The model formats owners serve, loaded from their files: XGBoost and LightGBM through
their scikit-learn API (joblib) and as native boosters (XGBoost .json/.ubj, LightGBM .txt),
beside ONNX and TorchScript. Each answers with the library's own probabilities and its
classes; a file that is not a classifier, unreadable, or unlike its config is refused with
one line that names what is wrong. Models are built here, small, not taken from the zoo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from scipy.special import expit
from sklearn.datasets import load_breast_cancer, load_wine

from modelshield.errors import ConfigError
from modelshield.serve.factory import build_shield
from modelshield.victims import load_model_file
from modelshield.victims.loaders import victim_from_files

WINE = load_wine(return_X_y=True)
CANCER = load_breast_cancer(return_X_y=True)
SMALL = {"n_estimators": 12, "max_depth": 3, "n_jobs": 1}


def _xgb(folder: Path, name: str, suffix: str, X: np.ndarray, y: np.ndarray,
         **kw: Any) -> tuple[Path, Any]:
    model = xgb.XGBClassifier(**SMALL, **kw).fit(X, y)
    path = folder / f"{name}{suffix}"
    if suffix == ".joblib":
        joblib.dump(model, path)
    else:
        model.save_model(path)
    return path, model


def _lgb(folder: Path, name: str, suffix: str, X: np.ndarray, y: np.ndarray) -> tuple[Path, Any]:
    model = lgb.LGBMClassifier(n_estimators=12, num_leaves=7, n_jobs=1, verbose=-1).fit(X, y)
    path = folder / f"{name}{suffix}"
    if suffix == ".joblib":
        joblib.dump(model, path)
    else:
        model.booster_.save_model(path)
    return path, model


BUILDERS: dict[str, Callable[[Path], tuple[Path, Any]]] = {
    "xgboost sklearn joblib": lambda f: _xgb(f, "xs", ".joblib", *WINE),
    "xgboost booster json": lambda f: _xgb(f, "xj", ".json", *WINE),
    "xgboost booster ubj": lambda f: _xgb(f, "xu", ".ubj", *WINE),
    "xgboost binary json": lambda f: _xgb(f, "xb", ".json", *CANCER),
    "xgboost softmax json": lambda f: _xgb(f, "xm", ".json", *WINE, objective="multi:softmax"),
    "xgboost logitraw ubj": lambda f: _xgb(f, "xr", ".ubj", *CANCER, objective="binary:logitraw"),
    "lightgbm sklearn joblib": lambda f: _lgb(f, "ls", ".joblib", *WINE),
    "lightgbm booster txt": lambda f: _lgb(f, "lt", ".txt", *WINE),
    "lightgbm binary txt": lambda f: _lgb(f, "lb", ".txt", *CANCER),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    folder = tmp_path_factory.mktemp("formats")
    return {name: build(folder) for name, build in BUILDERS.items()}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_each_format_answers_with_the_library_s_own_probabilities(
        built: dict[str, tuple[Path, Any]], name: str) -> None:
    path, model = built[name]
    X = (CANCER if "binary" in name or "logitraw" in name else WINE)[0]
    got = load_model_file(path).predict(X)
    assert got.probabilities.shape == (len(X), len(model.classes_))
    assert np.allclose(got.probabilities.sum(axis=1), 1.0)
    if "softmax" in name:  # the library gives labels only: they are the same
        assert np.array_equal(model.classes_[got.labels], model.predict(X))
    elif "logitraw" in name:  # margins only: the logistic of the margin
        margin = model.get_booster().inplace_predict(X, predict_type="margin")
        assert np.allclose(got.probabilities[:, 1], expit(margin), atol=1e-6)
    else:
        assert np.allclose(got.probabilities, model.predict_proba(X), atol=1e-6)
        assert np.array_equal(got.labels, model.predict_proba(X).argmax(axis=1))


def test_string_labels_keep_their_names_and_a_booster_numbers_its_classes(
        tmp_path: Path) -> None:
    X, y = WINE
    names = np.array(["barolo", "grignolino", "barbera"])
    path, model = _lgb(tmp_path, "named", ".joblib", X, names[y])
    np.savez(tmp_path / "data.npz", X_test=X[::3], y_test=names[y[::3]])
    v = victim_from_files(path, tmp_path / "data.npz")
    assert v.spec.classes == tuple(model.classes_) == ("barbera", "barolo", "grignolino")
    assert np.array_equal(np.asarray(model.classes_)[v.y_test], names[y[::3]])
    booster, _ = _xgb(tmp_path, "native", ".ubj", X, y)
    np.savez(tmp_path / "ints.npz", X_test=X[::3], y_test=y[::3])
    w = victim_from_files(booster, tmp_path / "ints.npz")
    assert w.spec.classes == ("0", "1", "2") and w.spec.n_features == 13


def test_a_regression_booster_is_refused_by_its_objective(tmp_path: Path) -> None:
    X, y = WINE
    reg = tmp_path / "reg.json"
    xgb.XGBRegressor(**SMALL).fit(X, y).save_model(reg)
    with pytest.raises(ConfigError, match=r"reg:squarederror.*not a classifier"):
        load_model_file(reg)
    lreg = tmp_path / "reg.txt"
    lgb.LGBMRegressor(n_estimators=5, verbose=-1).fit(X, y).booster_.save_model(lreg)
    with pytest.raises(ConfigError, match=r"regression.*not a classifier"):
        load_model_file(lreg)


@pytest.mark.parametrize("suffix", [".json", ".ubj", ".txt"])
def test_an_unreadable_booster_file_is_one_line_naming_the_file(tmp_path: Path,
                                                                suffix: str) -> None:
    bad = tmp_path / f"broken{suffix}"
    bad.write_text("not a model\n")
    with pytest.raises(ConfigError) as info:
        load_model_file(bad)
    text = str(info.value)
    assert "broken" in text and "\n" not in text and "Stack trace" not in text
    assert ("XGBoost" if suffix != ".txt" else "LightGBM") in text


def test_an_unknown_suffix_lists_every_format(tmp_path: Path) -> None:
    odd = tmp_path / "model.h5"
    odd.write_bytes(b"\0")
    with pytest.raises(ConfigError) as info:
        load_model_file(odd)
    for suffix in (".joblib", ".onnx", ".pt", ".json", ".ubj", ".txt"):
        assert suffix in str(info.value)


def test_the_gateway_refuses_a_config_the_model_file_does_not_answer(
        built: dict[str, tuple[Path, Any]], tmp_path: Path) -> None:
    path, _ = built["lightgbm booster txt"]
    X = WINE[0]
    base = {"file": str(path), "low": X.min(0).tolist(), "high": X.max(0).tolist()}

    def build(**model: Any) -> Any:
        return build_shield({"model": {**base, **model}, "tiers": {"t": {}},
                             "audit_url": f"sqlite:///{tmp_path}/a.db"})

    with pytest.raises(ConfigError, match=r"model\.classes.*2 classes.*3"):
        build(classes=["0", "1"])
    with pytest.raises(ConfigError, match=r"model\.n_features.*5.*13"):
        build(classes=["0", "1", "2"], low=0, high=1, n_features=5)
    shield = build(classes=["red", "white", "rose"])  # names for the model's three classes
    assert shield.spec.classes == ("red", "white", "rose")
    shield.close()


def test_an_audit_target_of_an_unknown_format_is_refused_when_the_scenario_loads(
        tmp_path: Path) -> None:
    from modelshield.audit.scenario import load_scenario

    with pytest.raises(ConfigError) as info:
        load_scenario({"target": {"file": str(tmp_path / "model.h5"),
                                  "data": str(tmp_path / "d.npz")},
                       "attackers": [{"attack": "knockoff", "budgets": [50]}]})
    text = str(info.value)
    assert "target.file" in text and ".txt" in text and ".ubj" in text, text


def test_an_owner_data_file_of_another_width_is_one_line(built: dict[str, tuple[Path, Any]],
                                                         tmp_path: Path) -> None:
    X, y = WINE
    np.savez(tmp_path / "narrow.npz", X_test=X[:, :5], y_test=y)
    for name in ("xgboost booster json", "lightgbm booster txt", "lightgbm sklearn joblib"):
        with pytest.raises(ConfigError, match=r"X_test has rows of 5 features; the model .* 13"):
            victim_from_files(built[name][0], tmp_path / "narrow.npz")
