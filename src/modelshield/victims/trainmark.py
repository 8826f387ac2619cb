"""Train-time watermarks: a trigger set the owner's model learns (Adi et al., USENIX
Security 2018, "Turning Your Weakness Into a Strength").

The owner draws a keyed set of trigger inputs (points of the domain box, far from the
data, as Adi et al.'s abstract images are) each with a keyed label drawn uniformly from the
classes, and trains the model on its data together with the triggers (repeated, so the
model learns them exactly). Whoever holds the model answers the triggers with their keyed
labels; a model built without them names each trigger's label with probability exactly
1/k, since the labels were drawn independently of it, so the matches of an independent
suspect are Binomial(n, 1/k) and the p-value is exact (:func:`trigger_test`).

It proves possession of the model itself (a copy of its file, a fine-tuned copy). Whether
it survives extraction is measured by ``bench/watermark_dawn.py``: an attacker queries
its own inputs, never the triggers, so the clone has no reason to learn them; the serve-
time watermark (:mod:`modelshield.defenses.watermark`) marks the answers the attacker
actually receives, and the entangled watermark (:mod:`modelshield.victims.entangled`)
ties the watermark to features of a real class, which the attacker does copy.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from scipy import stats
from sklearn.base import clone as sk_clone

from modelshield.answer import ApiSpec, FloatArray, IntArray
from modelshield.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class TriggerSet:
    """Keyed trigger inputs and their keyed labels."""

    x: FloatArray
    labels: IntArray
    n_classes: int

    def save(self, path: str | Path) -> None:
        np.savez(path, x=self.x, labels=self.labels, n_classes=self.n_classes)

    def test(self, suspect_labels: IntArray) -> TriggerResult:
        """:func:`trigger_test` of a suspect's answers on ``x``."""
        return trigger_test(suspect_labels, self)

    @classmethod
    def load(cls, path: str | Path) -> TriggerSet:
        return read_npz(path, "a trigger set written by TriggerSet.save (x, labels, "
                        "n_classes)", cls.from_arrays)

    @classmethod
    def from_arrays(cls, d: Any) -> TriggerSet:
        return cls(np.asarray(d["x"], dtype=np.float64), np.asarray(d["labels"], dtype=np.int64),
                   int(d["n_classes"]))


def read_npz(path: str | Path, what: str, build: Callable[[Any], T]) -> T:
    """``build`` applied to the arrays of the .npz file at ``path``; a missing file, or one
    that is not ``what``, is a ConfigError that names it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{str(p)!r} does not exist; expected {what}.")
    try:
        with np.load(p) as d:
            return build(d)
    except (KeyError, ValueError, OSError) as exc:
        raise ConfigError(f"{p}: not {what}: {exc}") from None


def keyed_rng(secret: str, purpose: bytes) -> np.random.Generator:
    """A generator seeded by HMAC-SHA256 of ``purpose`` under ``secret``."""
    digest = hmac.new(secret.encode(), purpose, hashlib.sha256).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def trigger_set(secret: str, spec: ApiSpec, n: int = 100) -> TriggerSet:
    """``n`` keyed points of the domain box with keyed uniform labels."""
    rng = keyed_rng(secret, b"adi-trigger-set")
    x = spec.uniform(n, rng)
    if spec.integer_features:
        x = np.round(x)
    labels = rng.integers(0, spec.n_classes, n)
    return TriggerSet(x, labels.astype(np.int64), spec.n_classes)


def embed_trigger_set(estimator: Any, X: FloatArray, y: IntArray, triggers: TriggerSet,
                      repeats: int = 10) -> Any:
    """A fresh copy of ``estimator`` fitted on the data with the triggers among it
    (``repeats`` times each), as Adi et al. train from scratch with the trigger set.
    Returns the fitted copy; check it with :func:`trigger_accuracy`."""
    x_all = np.vstack([X] + [triggers.x] * repeats)
    y_all = np.concatenate([np.asarray(y)] + [triggers.labels] * repeats)
    order = np.random.default_rng(0).permutation(len(x_all))
    return sk_clone(estimator).fit(x_all[order], y_all[order])


def trigger_accuracy(model: Any, triggers: TriggerSet) -> float:
    return float(np.mean(np.asarray(model.predict(triggers.x)) == triggers.labels))


@dataclass(frozen=True)
class TriggerResult:
    p_value: float
    matches: int
    triggers: int
    chance: float

    def summary(self) -> str:
        return (f"{self.matches} of {self.triggers} triggers answered with their keyed label "
                f"(chance {self.chance:.3g} each)")


def trigger_test(suspect_labels: IntArray, triggers: TriggerSet) -> TriggerResult:
    """Exact binomial test of a suspect's answers on the triggers against chance 1/k."""
    hits = int(np.sum(np.asarray(suspect_labels) == triggers.labels))
    n, chance = len(triggers.labels), 1.0 / triggers.n_classes
    p = float(stats.binom.sf(hits - 1, n, chance)) if hits else 1.0
    return TriggerResult(p, hits, n, chance)
