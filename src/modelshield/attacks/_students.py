"""Shared pieces of the substitute-training attacks (knockoff, jacobian, active).

The student's family is the attacker's choice. With ``student="auto"`` it is chosen the way an
attacker can, from the answers alone: a fifth of them are held out, each candidate (an MLP
on the scores, an MLP on the labels, a random forest and gradient boosting on the labels)
learns from the rest, and the one that agrees most with the held-out answers is trained
again on all of them. Piecewise-constant victims (trees) pick a forest or boosting; smooth
ones pick an MLP, on the scores when they carry more than the label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from modelshield.answer import Answer, FloatArray
from modelshield.errors import AttackRefused, ConfigError
from modelshield.models import AllClassesClassifier, TorchMLPClassifier

LABEL_KINDS = ("auto", "soft", "hard")
STUDENTS = ("auto", "mlp", "forest", "boosting")
# Fewer answers than this: no hold-out (too few to tell candidates apart); the MLP is used.
MIN_CHOICE = 50


def check_student(student: str, labels: str) -> None:
    if student not in STUDENTS:
        raise ConfigError.invalid("student", " or ".join(map(repr, STUDENTS)), student)
    if student in {"forest", "boosting"} and labels == "soft":
        raise ConfigError(f"student={student!r} learns from labels; it cannot use "
                          "labels='soft' (use labels='auto' or 'hard', or student='mlp')")


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


def fit_chosen(x: FloatArray, answers: list[Answer], labels: str, student: str,
               hidden: tuple[int, ...], n_classes: int, epochs: int, seed: int,
               pool: FloatArray | None, attack: str) -> tuple[Any, dict[str, Any]]:
    """Train the student ``student`` (or choose one, "auto") on the answers to ``x``.

    Returns the clone and what was chosen: ``{"student": "forest/hard", "holdout": {...}}``
    with each candidate's agreement on the held-out answers.
    """
    hard = np.concatenate([a.labels for a in answers])
    scores = all(a.probabilities is not None for a in answers)
    candidates: list[tuple[str, str]] = []
    for family in (STUDENTS[1:] if student == "auto" else (student,)):
        if family == "mlp":
            kinds = ["soft", "hard"] if labels == "auto" and scores else [labels]
            candidates += [("mlp", "soft" if k == "auto" and scores else
                            "hard" if k == "auto" else k) for k in kinds]
        elif labels != "soft":  # tree ensembles learn from labels
            candidates.append((family, "hard"))
    check_student(student, labels)

    def fit(idx: np.ndarray, family: str, kind: str) -> Any:
        if family == "mlp":
            y = targets(answers, kind, attack)
            return fit_student(x[idx], y[idx], hidden, n_classes, epochs, seed, pool)
        return AllClassesClassifier(_ensemble(family, seed), n_classes).fit(x[idx], hard[idx])

    everything = np.arange(len(x))
    if len(candidates) == 1 or len(x) < MIN_CHOICE:
        family, kind = candidates[0]
        return fit(everything, family, kind), {"student": f"{family}/{kind}"}
    order = np.random.default_rng(seed).permutation(len(x))
    held, train = order[: len(x) // 5], order[len(x) // 5:]
    holdout = {f"{family}/{kind}": float(np.mean(fit(train, family, kind).predict(x[held])
                                                  == hard[held]))
               for family, kind in candidates}
    best = max(holdout, key=lambda k: holdout[k])  # the first of equals: MLP before trees
    family, kind = best.split("/")
    return fit(everything, family, kind), {"student": best, "holdout": holdout}


def _ensemble(family: str, seed: int) -> Any:
    if family == "forest":
        return RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    return HistGradientBoostingClassifier(random_state=seed)
