"""Built-in data sets: shipped with scikit-learn or generated, never downloaded."""

from modelshield.data.datasets import Split, load_split, shift_augment

__all__ = ["Split", "load_split", "shift_augment"]
