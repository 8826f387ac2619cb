"""Shared pieces of the substitute-training attacks (knockoff, jacobian, active)."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelshield.answer import Answer, FloatArray
from modelshield.errors import AttackRefused, ConfigError
from modelshield.models import TorchMLPClassifier

LABEL_KINDS = ("auto", "soft", "hard")


def check_labels(kind: str) -> None:
    if kind not in LABEL_KINDS:
        raise ConfigError.invalid("labels", "'auto', 'soft' or 'hard'", kind)


def targets(answers: list[Answer], kind: str, attack: str) -> np.ndarray:
    """Training targets from the answers: probabilities (soft) or labels (hard).

    "auto" trains on the scores when every answer has them, else on the labels.
    """
    if kind == "auto":
        kind = "soft" if all(a.probabilities is not None for a in answers) else "hard"
    if kind == "soft":
        if any(a.probabilities is None for a in answers):
            raise AttackRefused(attack, "class scores (labels='soft'); use labels='hard'",
                                answers[0].policy)
        return np.concatenate([a.probabilities for a in answers if a.probabilities is not None])
    return np.concatenate([a.labels for a in answers])


def epochs_for(n: int, base: int) -> int:
    """Fewer passes over large sets, more over small ones: about the same number of steps."""
    return int(np.clip(base * 1000 / max(n, 1), 30, base))


def checkpoint_sizes(budget: int, every: tuple[int, ...]) -> list[int]:
    """The query counts at which the student is (re)trained and saved."""
    return sorted({c for c in every if 0 < c < budget} | {budget})


def fit_student(x: FloatArray, y: np.ndarray, hidden: tuple[int, ...], n_classes: int,
                epochs: int, seed: int, pool: FloatArray | None = None) -> Any:
    """Train a fresh student; scores are matched as logits, inputs scaled by the pool.

    Scores are clipped at 1e-6 before the log: on the digits MLP this beat 1e-3, 1e-12 and
    cross-entropy at 100, 300 and 1,000 queries (mean of three seeds).
    """
    return TorchMLPClassifier(hidden, n_classes=n_classes, epochs=epochs_for(len(x), epochs),
                              loss="logits", logit_floor=1e-6, reference=pool,
                              random_state=seed).fit(x, y)
