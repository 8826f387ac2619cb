"""Whether an owner's model file is the model a target serves, from a handful of its answers.

A clone attacked over HTTP is scored against the owner's file (``--model-file``); a file of
another model of the same width would score it against the wrong model without a word. So a
few of the owner's own rows are asked of the target first, and the file must give the same
label to nearly all of them. Labels, not scores: a tier's output policy may round, noise or
withhold the scores, and a serve-time watermark flips a small share of labels, so a few
disagreements are allowed (``MIN_AGREEMENT``). The queries are counted and reported apart
from the attack's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelshield.answer import FloatArray
from modelshield.errors import ConfigError
from modelshield.oracle.base import Oracle
from modelshield.victims.base import Victim

CHECK_ROWS = 16
MIN_AGREEMENT = 0.75  # a watermark flips a few labels; another model misses far more


@dataclass(frozen=True)
class FileCheck:
    """The check's outcome: rows asked (= queries spent), rows whose labels agreed, and the
    largest gap between the file's and the target's scores where the target gave them."""

    queries: int
    agreed: int
    score_gap: float | None

    def describe(self) -> str:
        gap = "" if self.score_gap is None else f", scores within {self.score_gap:.2g}"
        return (f"--model-file answers as the target on {self.agreed} of {self.queries} of "
                f"its rows{gap} ({self.queries} queries, not counted in the attack's budget)")


def check_model_file(victim: Victim, oracle: Oracle, rows: int = CHECK_ROWS,
                     seed: int = 0) -> FileCheck:
    """Ask the target ``rows`` of the owner's test rows (inside the target's domain) and
    compare with the file's labels; raise ConfigError (one line) where they disagree."""
    spec = oracle.spec
    if victim.spec.n_features != spec.n_features:
        raise ConfigError(f"--model-file takes {victim.spec.n_features} features; the "
                          f"target's model takes {spec.n_features}.")
    n = min(rows, len(victim.X_test))
    if n < 1:
        raise ConfigError("--data: no test rows (X_test) to check --model-file against the "
                          "target with.")
    pick = np.random.default_rng(seed).choice(len(victim.X_test), size=n, replace=False)
    x: FloatArray = np.clip(victim.X_test[pick], spec.low, spec.high)
    if spec.integer_features:
        x = np.round(x)
    answer = oracle.query(x)
    mine = victim.predict(x)
    agreed = int(np.sum(mine.labels == answer.labels))
    gap = None
    if answer.has_full_probabilities and answer.probabilities is not None \
            and answer.probabilities.shape == mine.probabilities.shape:
        gap = float(np.max(np.abs(answer.probabilities - mine.probabilities)))
    if agreed < MIN_AGREEMENT * n:
        raise ConfigError(f"--model-file is not the model the target serves: it gives the "
                          f"target's label to only {agreed} of {n} of your rows ({n} queries "
                          "spent on the check); the clone would be scored against the wrong "
                          "model.")
    return FileCheck(queries=n, agreed=agreed, score_gap=gap)
