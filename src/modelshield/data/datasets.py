"""Data sets for the built-in victims, split three ways.

Every built-in task is split into the victim's training data (50%), the attacker's natural
pool (25%) and the test set (25%). The pool is disjoint from the victim's training data: it
stands for data of the same kind that an attacker collected on their own. Victims made for
membership inference split 25% / 50% / 25%: as many non-members (the test set) as members,
and a population twice as large for the attacker's shadow models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_classification
from sklearn.model_selection import train_test_split

from modelshield.answer import FloatArray, IntArray
from modelshield.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Split:
    """One task split for a victim: train / attacker pool / test, plus the domain box."""

    X_train: FloatArray
    y_train: IntArray
    pool: FloatArray
    X_test: FloatArray
    y_test: IntArray
    low: FloatArray
    high: FloatArray
    classes: tuple[str, ...]
    integer_features: bool = False
    y_pool: IntArray | None = None  # the pool's true labels (an attacker labels its own data)


def load_split(name: str, seed: int = 0, *, fractions: tuple[float, float] = (0.5, 0.25),
               **synthetic: int) -> Split:
    """Load and split a built-in task: ``breast-cancer``, ``digits``, ``wine``, ``synthetic``,
    ``tabular``.

    fractions: the victim's training share and the attacker's pool share; the test set gets
    the rest. ``synthetic`` takes ``n_samples``, ``n_features`` and ``n_classes``.
    """
    train_share, pool_share = fractions
    if not (0 < train_share < 1 and 0 < pool_share < 1 and train_share + pool_share < 1):
        raise ConfigError.invalid("fractions", "two shares in (0, 1) summing below 1", fractions)
    if name == "synthetic":
        X, y = _synthetic(seed, **synthetic)
    elif name == "tabular":
        X, y = _tabular(seed)
    elif name in _LOADERS:
        bunch = _LOADERS[name]()
        X, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    else:
        raise UnknownNameError("data set", name, [*_LOADERS, "synthetic", "tabular"])
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, train_size=train_share, random_state=seed, stratify=y
    )
    pool, X_test, y_pool, y_test = train_test_split(
        X_rest, y_rest, train_size=pool_share / (1 - train_share), random_state=seed,
        stratify=y_rest
    )
    low, high = X.min(axis=0), X.max(axis=0)
    integer = name == "digits"
    if integer:  # pixel intensities are documented as 0..16
        low, high = np.zeros(X.shape[1]), np.full(X.shape[1], 16.0)
        pool = shift_augment(pool, side=8)
        y_pool = np.tile(y_pool, 9)  # the shifted copies keep their digit
    classes = tuple(str(c) for c in np.unique(y))
    return Split(X_train, y_train, pool, X_test, y_test, low, high, classes, integer, y_pool)


def shift_augment(images: FloatArray, side: int) -> FloatArray:
    """The images and their eight one-pixel shifts (zero fill): 9x as many natural samples.

    An attacker with a few hundred digit images cheaply makes thousands of natural-looking
    ones this way; the shifted images stay on the 0..16 pixel grid.
    """
    imgs = images.reshape(-1, side, side)
    out = [images]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            shifted = np.zeros_like(imgs)
            ys = slice(max(dy, 0), side + min(dy, 0))
            yd = slice(max(-dy, 0), side + min(-dy, 0))
            xs = slice(max(dx, 0), side + min(dx, 0))
            xd = slice(max(-dx, 0), side + min(-dx, 0))
            shifted[:, ys, xs] = imgs[:, yd, xd]
            out.append(shifted.reshape(len(images), -1))
    return np.concatenate(out)


def _synthetic(
    seed: int, n_samples: int = 4000, n_features: int = 20, n_classes: int = 2
) -> tuple[FloatArray, IntArray]:
    X, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=max(2, n_features // 2),
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=1.0,
        random_state=seed,
    )
    return X.astype(np.float64), y.astype(np.int64)


def _tabular(seed: int) -> tuple[FloatArray, IntArray]:
    """A tabular population a wide network memorizes: 4,000 rows, 30 features, 10 classes of
    two clusters each, 2% of labels flipped (the hard, atypical records membership inference
    finds first)."""
    X, y = make_classification(
        n_samples=4000, n_features=30, n_informative=15, n_redundant=0, n_classes=10,
        n_clusters_per_class=2, class_sep=1.0, flip_y=0.02, random_state=seed,
    )
    return X.astype(np.float64), y.astype(np.int64)


_LOADERS = {"breast-cancer": load_breast_cancer, "digits": load_digits, "wine": load_wine}
