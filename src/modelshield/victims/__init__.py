"""Victims: adapters for trained models, and the built-in zoo."""

from modelshield.victims.base import ModelAdapter, OnnxAdapter, SklearnAdapter, TorchAdapter, Victim
from modelshield.victims.loaders import load_model_file
from modelshield.victims.zoo import ZOO, load_victim, wrap_estimator

__all__ = [
    "ZOO",
    "ModelAdapter",
    "OnnxAdapter",
    "SklearnAdapter",
    "TorchAdapter",
    "Victim",
    "load_model_file",
    "load_victim",
    "wrap_estimator",
]
