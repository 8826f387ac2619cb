"""Load a model file (joblib/pickle of a scikit-learn estimator, a TorchScript file, ONNX)."""

from __future__ import annotations

from pathlib import Path

import joblib

from modelshield.errors import ConfigError
from modelshield.victims.base import ModelAdapter, OnnxAdapter, SklearnAdapter, TorchAdapter


def load_model_file(path: str | Path) -> ModelAdapter:
    """An adapter for the model in ``path``, chosen by its suffix.

    ``.joblib``/``.pkl``: a fitted scikit-learn classifier; ``.pt``/``.pth``: a TorchScript
    module; ``.onnx``: an ONNX classifier. Only load files you trust: joblib and pickle run code.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Model file {str(p)!r} does not exist.")
    suffix = p.suffix.lower()
    if suffix in {".joblib", ".pkl", ".pickle"}:
        return SklearnAdapter(joblib.load(p))
    if suffix in {".pt", ".pth"}:
        import torch

        return TorchAdapter(torch.jit.load(str(p)))  # type: ignore[no-untyped-call]
    if suffix == ".onnx":
        return OnnxAdapter(str(p))
    raise ConfigError.invalid("model file", "a .joblib, .pkl, .pt, .pth or .onnx file", str(p))
