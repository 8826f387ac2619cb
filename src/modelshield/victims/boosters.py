"""Gradient-boosted classifiers in their libraries' own files, as adapters.

* :class:`XGBoostAdapter`: an XGBoost ``Booster`` saved with ``save_model`` as ``.json`` or
  ``.ubj`` (``xgb.train`` or ``XGBClassifier.save_model``);
* :class:`LightGBMAdapter`: a LightGBM ``Booster`` saved as a text model file
  (``booster.save_model("model.txt")``, ``LGBMClassifier().booster_.save_model``).

A native booster does not record class names: its classes are ``0 .. n-1``, as the library
numbers them. Its objective says how margins become probabilities; an objective that is not
a classifier's (regression, ranking) is refused. Unlike joblib or pickle, these files hold
no code: loading one runs nothing of its author's.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, softmax

from modelshield.answer import FloatArray, Prediction
from modelshield.errors import ConfigError

XGB_OBJECTIVES = ("binary:logistic", "binary:logitraw", "binary:hinge", "multi:softprob",
                  "multi:softmax")
"""The XGBoost objectives of a classifier, and so of a booster that can be served."""

LGB_OBJECTIVES = ("binary", "cross_entropy", "multiclass", "multiclassova")
"""The LightGBM objectives of a classifier (aliases are resolved when the file is written)."""


def _one_hot(labels: np.ndarray, n: int) -> FloatArray:
    return np.eye(n)[labels.astype(np.int64)]


def _two_columns(p: FloatArray) -> FloatArray:
    """The probability of class 1 as the probabilities of classes 0 and 1."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    return np.column_stack([1.0 - p, p])


def _library(module: str, name: str) -> Any:
    """The booster library ``module``, or a ConfigError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - depends on the extra
        raise ConfigError(f"{name} models need {module}: pip install "
                          "'modelshield[boost]'") from None


class XGBoostAdapter:
    """An XGBoost booster file (.json, .ubj) as a classifier with probabilities."""

    def __init__(self, path: str | Path) -> None:
        xgb = _library("xgboost", "XGBoost")
        p = Path(path)
        try:
            self.booster = xgb.Booster(model_file=str(p))
        except xgb.core.XGBoostError as exc:
            reason = str(exc).split("\n")[0].rsplit(": ", 1)[-1].strip()
            raise ConfigError(f"Model file {p.name!r}: XGBoost could not read it as a booster "
                              f"saved with save_model (.json or .ubj): {reason}") from None
        learner = json.loads(self.booster.save_config())["learner"]
        self.objective = str(learner["objective"]["name"])
        if self.objective not in XGB_OBJECTIVES:
            raise ConfigError(f"Model file {p.name!r}: its XGBoost objective "
                              f"{self.objective!r} is not a classifier's; a served booster "
                              f"has one of {', '.join(XGB_OBJECTIVES)}")
        self.n_classes = max(2, int(learner["learner_model_param"].get("num_class", "0")))
        self.n_features = int(self.booster.num_features())

    def predict(self, inputs: FloatArray) -> Prediction:
        x = np.asarray(inputs, dtype=np.float64)
        if self.objective in ("multi:softprob", "binary:logistic"):
            out = np.asarray(self.booster.inplace_predict(x), dtype=np.float64)
            probs = out if out.ndim == 2 else _two_columns(out)
        else:  # the library gives labels here: probabilities from its margins
            margin = np.asarray(self.booster.inplace_predict(x, predict_type="margin"),
                                dtype=np.float64)
            if self.objective == "multi:softmax":
                probs = softmax(margin, axis=1)
            elif self.objective == "binary:logitraw":
                probs = _two_columns(expit(margin))
            else:  # binary:hinge: a label, no score
                probs = _one_hot(margin.reshape(-1) > 0, 2)
        return Prediction(probabilities=probs)


class LightGBMAdapter:
    """A LightGBM booster's text model file as a classifier with probabilities."""

    def __init__(self, path: str | Path) -> None:
        lgb = _library("lightgbm", "LightGBM")
        p = Path(path)
        try:
            self.booster = lgb.Booster(model_file=str(p))
        except lgb.basic.LightGBMError as exc:
            raise ConfigError(f"Model file {p.name!r}: LightGBM could not read it as a "
                              f"booster's text model file: {exc}") from None
        head = self.booster.dump_model(num_iteration=1)
        self.objective = str(head.get("objective", "")).split(" ")[0]
        if self.objective not in LGB_OBJECTIVES:
            raise ConfigError(f"Model file {p.name!r}: its LightGBM objective "
                              f"{self.objective or 'unknown'!r} is not a classifier's; a "
                              f"served booster has one of {', '.join(LGB_OBJECTIVES)}")
        self.n_classes = max(2, int(head.get("num_class", 1)))
        self.n_features = int(self.booster.num_feature())

    def predict(self, inputs: FloatArray) -> Prediction:
        out: Any = self.booster.predict(np.asarray(inputs, dtype=np.float64))
        out = np.asarray(out, dtype=np.float64)
        if out.ndim == 1:
            return Prediction(probabilities=_two_columns(out))
        if self.objective == "multiclassova":  # one sigmoid a class: scaled to sum to 1
            out = out / out.sum(axis=1, keepdims=True)
        return Prediction(probabilities=out)
