"""Shared pieces of the substitute-training attacks (knockoff, jacobian, active).

The student's family is the attacker's choice. With ``student="auto"`` it is chosen the way an
attacker can, from the answers alone. A fifth of them are held out; each candidate learns
from the rest: an MLP on the scores matched as logits, the same by cross-entropy, an MLP on
the labels, a forest (extra trees regressing the scores, or a random forest on the labels
when no scores come back) and gradient boosting on the labels. The first (logits, or
cross-entropy from ``CROSS_ENTROPY_FROM`` answers on, or the labels when no scores come
back; the forest when at most half the score vectors are distinct, as a tree's leaves
answer) is kept unless the best of the others agrees with the
held-out answers more often beyond chance (one-sided McNemar test at 5%); the one kept is
trained again on all the answers. From ``RATE_CHOICE_FROM`` answers on, the cross-entropy
MLP's learning rate (annealed or constant) is chosen first, by cross-entropy on the same
held-out fifth. Given a few hundred answers, piecewise-constant victims
(trees) pick a forest or boosting; smooth ones keep the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from modelshield.answer import Answer, FloatArray
from modelshield.errors import AttackRefused, ConfigError
from modelshield.models import (
    AllClassesClassifier,
    MeanEnsemble,
    ScoreForestClassifier,
    TorchMLPClassifier,
)

LABEL_KINDS = ("auto", "soft", "soft-kl", "hard")
STUDENTS = ("auto", "mlp", "forest", "boosting")
# Fewer answers than this: no hold-out (too few to tell candidates apart); the MLP is used.
MIN_CHOICE = 50
# knockoff's MLP divides each input by its spread in the attacker's pool, floored here. The
# floor of 1 before left features that vary on a small scale (breast cancer's smoothness,
# 0.01) nearly flat; 0.01 was at or above it in all 8 cells (4 families at 300 and 1,000
# queries; wine, breast cancer, digits and synthetic data, seeds 5-6: not the seeds the
# comparison with ART reports), 0.1 and 0.001 each lower in one or two
# (bench/results/knockoff_scale_tune_*.json). jacobian keeps 1 (not re-tuned); active ranks
# with 1 (active.RANK_FLOOR) and trains its clone as knockoff does.
SCALE_FLOOR = 0.01
# From this many answers on, the MLP's first candidate learns the scores by cross-entropy
# rather than as logits: on the tuning cells (4 families x 4 data sets, seeds 5-6) the
# logits were ahead at 300 queries in all 4 families and at 1,000 in 3, cross-entropy at
# 3,000 in all 4 (by 0.1 to 0.8 points; bench/results/knockoff_loss_tune_*.json). The
# threshold lies between the two budgets and was not tuned finer.
CROSS_ENTROPY_FROM = 2000
# From this many answers on (scores returned), the MLP trained by cross-entropy is trained
# twice on the four fifths not held out, Adam's rate annealed to 0 (cosine) and held constant (as
# ART's PyTorchClassifier trains), and keeps the rate whose student has the lower
# cross-entropy to the held-out scores: a continuous score, so a fifth of a few thousand
# answers tells a 0.3-point difference apart where agreement cannot. On the tuning cells
# of bench/rate_tune.py (seeds 5-7) the constant rate was ahead on the synthetic victims
# and the annealed one on digits. None: always annealed.
RATE_CHOICE_FROM: int | None = CROSS_ENTROPY_FROM
# The rates compared; one alone is used without a comparison.
RATES: tuple[str, ...] = ("cosine", "constant")
# knockoff's MLP clone is the mean of this many networks trained from successive seeds.
MEMBERS = 1
# The forest on the scores: extra trees regressing them (ScoreForestClassifier). On tree
# victims (wine, breast cancer, digits, synthetic; seeds 5-7: not the seeds the comparison
# with ART reports) it was ahead of the random forest on the labels at 100, 300, 1,000 and
# 3,000 queries, by 2.5, 1.6, 1.0 and 0.7 points (bench/results/knockoff_forest_tune.json).
FOREST_TREES = 200


def check_student(student: str, labels: str) -> None:
    if student not in STUDENTS:
        raise ConfigError.invalid("student", " or ".join(map(repr, STUDENTS)), student)
    if (student == "boosting" and labels in {"soft", "soft-kl"}) or \
            (student == "forest" and labels == "soft-kl"):
        learns = "labels" if student == "boosting" else "the scores by regression"
        raise ConfigError(f"student={student!r} learns from {learns}; it cannot use "
                          f"labels={labels!r} (use labels='auto', 'soft' for the forest or "
                          "'hard', or student='mlp')")


def check_labels(kind: str) -> None:
    if kind not in LABEL_KINDS:
        raise ConfigError.invalid("labels", "'auto', 'soft', 'soft-kl' or 'hard'", kind)


def targets(answers: list[Answer], kind: str, attack: str) -> np.ndarray:
    """Training targets from the answers: probabilities (soft) or labels (hard).

    "auto" trains on the scores when every answer has them, else on the labels; "soft-kl"
    is "soft" (the loss differs, not the targets).
    """
    if kind == "auto":
        kind = "soft" if all(a.probabilities is not None for a in answers) else "hard"
    if kind in ("soft", "soft-kl"):
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
                epochs: int, seed: int, pool: FloatArray | None = None,
                loss: str = "logits", scale_floor: float = 1.0, fitted: bool = True,
                schedule: str = "cosine") -> Any:
    """Train a fresh student; scores are matched as logits, inputs scaled by the pool (each
    feature's spread floored at ``scale_floor``), Adam's rate on ``schedule``.
    ``fitted=False``: the student unfitted.

    Scores are clipped at 1e-6 before the log: on the digits MLP this beat 1e-3, 1e-12 and
    cross-entropy at 100, 300 and 1,000 queries (mean of three seeds).
    """
    net = TorchMLPClassifier(hidden, n_classes=n_classes, epochs=epochs_for(len(x), epochs),
                             loss=loss, logit_floor=1e-6, reference=pool,
                             scale_floor=scale_floor, schedule=schedule, random_state=seed)
    return net.fit(x, y) if fitted else net


def fit_chosen(x: FloatArray, answers: list[Answer], labels: str, student: str,
               hidden: tuple[int, ...], n_classes: int, epochs: int, seed: int,
               pool: FloatArray | None, attack: str, members: int = 1
               ) -> tuple[Any, dict[str, Any]]:
    """Train the student ``student`` (or choose one, "auto") on the answers to ``x``.

    members: an MLP kept as the clone is the mean of this many, trained from seeds
        ``seed``, ``seed + 1``, ... (:class:`~modelshield.models.MeanEnsemble`); the
        candidates compared on the held-out answers are single networks.
    Returns the clone and what was chosen: ``{"student": "forest/hard", "holdout": {...}}``
    with each candidate's agreement on the held-out answers; where the cross-entropy MLP's
    rate was chosen (``RATE_CHOICE_FROM``), ``"rate"`` and each rate's held-out
    cross-entropy (``"rate_holdout"``).
    """
    scores = all(a.probabilities is not None for a in answers)
    candidates = _candidates(student, labels, scores, len(x))
    check_student(student, labels)
    trainer = _Trainer(x, answers, np.concatenate([a.labels for a in answers]), hidden,
                       n_classes, epochs, seed, pool, attack)
    if student == "auto" and scores and _piecewise_constant(answers):
        # Answers that repeat exactly come from a model that is piecewise constant (a tree's
        # leaves): a forest is the default then, and the MLP the challenger.
        candidates.sort(key=lambda c: c[0] != "forest")
    everything = np.arange(len(x))
    order = np.random.default_rng(seed).permutation(len(x))
    held, train = order[: len(x) // 5], order[len(x) // 5:]
    if RATE_CHOICE_FROM is not None and len(x) >= max(RATE_CHOICE_FROM, MIN_CHOICE) and \
            scores and ("mlp", "soft-kl") in candidates:
        trainer, trained, facts = _choose_rate(trainer, held, train)
    else:
        trained, facts = {}, {}
    if len(candidates) == 1 or len(x) < MIN_CHOICE:
        family, kind = candidates[0]
        return trainer.fit(everything, family, kind, members), {"student": f"{family}/{kind}", **facts}
    right = {name: (trained[name] if name in trained else trainer.fit(train, family, kind)
                    ).predict(x[held]) == trainer.hard[held]
             for family, kind in candidates for name in [f"{family}/{kind}"]}
    best, held_out = _challenge(right)
    family, kind = best.split("/")
    return trainer.fit(everything, family, kind, members), {"student": best, **held_out, **facts}


def _candidates(student: str, labels: str, scores: bool, n: int) -> list[tuple[str, str]]:
    """The (family, targets) students to compare on ``n`` answers, the default first;
    ``scores``: every answer came with its class scores."""
    candidates: list[tuple[str, str]] = []
    for family in (STUDENTS[1:] if student == "auto" else (student,)):
        if family == "mlp":
            candidates += [("mlp", kind) for kind in _mlp_targets(labels, scores, n)]
        elif family == "forest" and labels in {"auto", "soft"}:
            # extra trees regress the scores; with labels only, a random forest on them
            candidates.append((family, "soft" if scores or labels == "soft" else "hard"))
        elif labels not in {"soft", "soft-kl"}:  # boosting (and a forest told "hard")
            candidates.append((family, "hard"))
    return candidates


def _mlp_targets(labels: str, scores: bool, n: int) -> list[str]:
    """On the scores, matched as logits ("soft") or by cross-entropy ("soft-kl", as the papers
    and ART train): logits learn more from few answers, cross-entropy sometimes a little more
    from many."""
    if labels != "auto":
        return [labels]
    if not scores:
        return ["hard"]
    return ["soft-kl", "soft", "hard"] if n >= CROSS_ENTROPY_FROM else ["soft", "soft-kl", "hard"]


@dataclass(frozen=True)
class _Trainer:
    """Fits one candidate student on some of the answers to ``x`` (``hard``: their labels).
    ``schedule``: the cross-entropy MLP's learning rate, once chosen."""

    x: FloatArray
    answers: list[Answer]
    hard: np.ndarray
    hidden: tuple[int, ...]
    n_classes: int
    epochs: int
    seed: int
    pool: FloatArray | None
    attack: str
    schedule: str = "cosine"

    def fit(self, idx: np.ndarray, family: str, kind: str, copies: int = 1,
            rate: str | None = None) -> Any:
        """The student of ``family`` trained on ``kind`` targets at rows ``idx``; an MLP the
        mean of ``copies`` networks, on the rate ``rate`` where given."""
        if family == "mlp":
            return self._mlp(idx, kind, copies, rate)
        if kind == "soft":  # the forest on the scores
            return ScoreForestClassifier(FOREST_TREES, n_classes=self.n_classes,
                                         random_state=self.seed
                                         ).fit(self.x[idx], self.targets_as("soft")[idx])
        return AllClassesClassifier(_ensemble(family, self.seed), self.n_classes
                                    ).fit(self.x[idx], self.hard[idx])

    def _mlp(self, idx: np.ndarray, kind: str, copies: int, rate: str | None) -> Any:
        y = self.targets_as("soft" if kind == "soft-kl" else kind)
        one = fit_student(self.x[idx], y[idx], self.hidden, self.n_classes, self.epochs,
                          self.seed, self.pool, loss="kl" if kind == "soft-kl" else "logits",
                          scale_floor=SCALE_FLOOR, fitted=copies == 1,
                          schedule=rate or (self.schedule if kind == "soft-kl" else "cosine"))
        if copies == 1:
            return one
        return MeanEnsemble.seeds(one, copies, self.seed).fit(self.x[idx], y[idx])

    def targets_as(self, kind: str) -> np.ndarray:
        return targets(self.answers, kind, self.attack)


def _choose_rate(trainer: _Trainer, held: np.ndarray, train: np.ndarray
                 ) -> tuple[_Trainer, dict[str, Any], dict[str, Any]]:
    """The cross-entropy MLP's rate (``RATES``): with one, that one; else each trained on
    ``train``, the one with the lower cross-entropy to the scores at ``held`` kept. Returns
    the trainer on that rate, the student so trained by name, and the facts."""
    if len(RATES) <= 1:
        return replace(trainer, schedule=RATES[0]), {}, {"rate": RATES[0]}
    p = trainer.targets_as("soft")[held]
    by_rate = {rate: trainer.fit(train, "mlp", "soft-kl", rate=rate) for rate in RATES}
    loss = {rate: _cross_entropy(p, net.predict_proba(trainer.x[held]))
            for rate, net in by_rate.items()}
    schedule = min(loss, key=lambda r: loss[r])
    return (replace(trainer, schedule=schedule), {"mlp/soft-kl": by_rate[schedule]},
            {"rate_holdout": loss, "rate": schedule})


def _cross_entropy(p: FloatArray, q: FloatArray) -> float:
    return float(-np.mean(np.sum(p * np.log(np.maximum(q, 1e-12)), axis=1)))


def _challenge(right: dict[str, np.ndarray]) -> tuple[str, dict[str, Any]]:
    """The candidate kept, from whether each got each held-out answer ``right``, and the
    facts: each one's agreement (``holdout``) and the challenger's p-value.

    The first candidate (the MLP on the scores, else on the labels) stays unless another
    is better on the held-out answers beyond chance: a one-sided exact McNemar test at 5%
    on the answers where exactly one of the two is right. A fifth of 100 answers is too
    few to pick on the bare agreement (that cost 0.003-0.037 fidelity at 100-300 queries:
    bench/results/knockoff_vs_art_bare_holdout.json against knockoff_vs_art.json).
    """
    holdout = {name: float(np.mean(r)) for name, r in right.items()}
    default = next(iter(right))
    challenger = max(list(right)[1:], key=lambda k: holdout[k])
    wins = int(np.sum(right[challenger] & ~right[default]))
    losses = int(np.sum(~right[challenger] & right[default]))
    p_value = float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue) \
        if wins + losses else 1.0
    best = challenger if p_value < 0.05 else default
    return best, {"holdout": holdout, "challenger_p": p_value}


def _piecewise_constant(answers: list[Answer]) -> bool:
    """Whether at most half the score vectors are distinct: a smooth model answers every
    distinct input with distinct scores; a tree answers with one vector a leaf."""
    p = np.concatenate([a.probabilities for a in answers if a.probabilities is not None])
    return len(p) >= 10 and len(np.unique(np.round(p, 12), axis=0)) <= len(p) / 2


def _ensemble(family: str, seed: int) -> Any:
    if family == "forest":
        return RandomForestClassifier(n_estimators=FOREST_TREES, random_state=seed, n_jobs=1)
    return HistGradientBoostingClassifier(random_state=seed)
