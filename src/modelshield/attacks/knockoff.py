"""Knockoff / Copycat substitute training.

Orekondy, Schiele & Fritz, "Knockoff Nets", CVPR 2019; Correia-Silva et al., "Copycat CNN",
IJCNN 2018. Query the victim on inputs the attacker can get — uniform noise in the domain,
their own natural data (the pool), or synthetic points mixed from it — and train a student
of the attacker's chosen architecture on the answers: on the returned probabilities (soft
labels) or on the labels alone (hard); "auto" uses the scores when the policy returns them.
Soft labels are matched as logits: squared error on class-centred log-probabilities, each
clipped at 1e-6 so a 0 probability never makes a log(0). The papers use cross-entropy
(``labels="soft-kl"``), which learns less per query when the victim is confident. The
student is an MLP, a forest (extra trees regressing the scores, or a random forest on the
labels when only labels come back) or gradient boosting, or (``student="auto"``, the
default) chosen from a fifth of the answers held out (see ``_students``). ``members=n``
makes an MLP clone the mean of n networks trained from successive seeds (off by default:
see ``MEMBERS``). Every loop is bounded by the budget.

Against a watermark (an attacker who knows the answers may be marked, as DAWN marks
them): ``votes=n`` sends each training point as n copies, itself and n-1 jittered by
``jitter`` of each feature's range, and trains on the majority label and the mean scores,
buying a watermark-free answer with n queries; ``prune=True`` fits the clone, drops the
answers it disagrees with (where a watermark would sit) and fits again.

Needs: labels (hard) or class scores (soft; top-k scores are completed by spreading the
withheld mass evenly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from modelshield.answer import Answer, FloatArray
from modelshield.attacks._students import (
    MEMBERS,
    check_labels,
    check_student,
    checkpoint_sizes,
    fit_chosen,
)
from modelshield.attacks.base import QUERY_SOURCES, Attack, Session, draw_queries
from modelshield.errors import ConfigError
from modelshield.oracle.base import concat_answers


@dataclass
class Knockoff(Attack):
    """Train a substitute on answers to uniform, natural-pool or synthetic queries."""

    name: ClassVar[str] = "knockoff"
    paper: ClassVar[str] = "Orekondy et al., Knockoff Nets, CVPR 2019; Copycat CNN, IJCNN 2018"
    needs: ClassVar[str] = "labels (hard) or class scores (soft)"

    source: str = "pool"
    labels: str = "auto"
    student: str = "auto"
    hidden: tuple[int, ...] = (128,)
    epochs: int = 200
    members: int = MEMBERS
    checkpoints: tuple[int, ...] = field(default=())
    votes: int = 1
    jitter: float = 0.01
    prune: bool = False

    def validate(self) -> None:
        if self.source not in QUERY_SOURCES:
            raise ConfigError.invalid("source", " or ".join(map(repr, QUERY_SOURCES)),
                                      self.source)
        if not isinstance(self.votes, int) or self.votes < 1:
            raise ConfigError.invalid("votes", "an integer >= 1", self.votes)
        if not isinstance(self.members, int) or not 1 <= self.members <= 16:
            raise ConfigError.invalid("members", "an integer from 1 to 16", self.members)
        if not 0 <= self.jitter <= 0.5:
            raise ConfigError.invalid("jitter", "a share of each feature's range in [0, 0.5]",
                                      self.jitter)
        check_labels(self.labels)
        check_student(self.student, self.labels)

    @property
    def steered(self) -> bool:
        return False  # every row is drawn before the first answer (votes repeat them)

    def extract(self, session: Session, pool: FloatArray | None,
                rng: np.random.Generator) -> tuple[Any, None, dict[str, Any]]:
        spec = session.spec
        budget = session.remaining
        votes = self.votes
        if budget < votes:
            raise ConfigError(f"budget {budget} is below votes={votes}: each training point "
                              f"costs {votes} queries.")
        points = budget // votes
        x_all = draw_queries(self.source, points, spec, pool, rng, self.name)
        x_q = _copies(x_all, votes, self.jitter, spec, rng) if votes > 1 else x_all
        answers: list[Answer] = []
        done = 0
        if self.labels in ("soft", "soft-kl"):  # one query tells a refusal, before a batch is spent
            answers.append(session.query(x_q[:1]))
            session.require(answers[0], "scores")
            done = 1
        clone = None
        chosen: dict[str, Any] = {}
        every = tuple(c // votes for c in self.checkpoints)
        for size in checkpoint_sizes(points, every):
            if size * votes > done:
                answers.append(session.query(x_q[done:size * votes]))
            done = size * votes
            got = answers if votes == 1 else [_majority(concat_answers(answers), votes)]
            clone, chosen = fit_chosen(x_all[:size], got, self.labels, self.student,
                                       self.hidden, spec.n_classes, self.epochs,
                                       self.random_state, pool, self.name, self.members)
            if self.prune:
                clone, chosen = self._pruned(clone, chosen, x_all[:size], concat_answers(got), pool,
                                             spec.n_classes)
            session.checkpoint(clone)
        extra: dict[str, Any] = {"votes": votes, "points": points} if votes > 1 else {}
        if votes > 1 and points * votes < budget:
            extra["budget_note"] = (f"{budget - points * votes} queries left unspent: a "
                                    f"training point costs {votes}")
        return clone, None, {"source": self.source, "labels": self.labels, **chosen, **extra}

    def _pruned(self, clone: Any, chosen: dict[str, Any], x: FloatArray, answer: Answer,
                pool: FloatArray | None, n_classes: int) -> tuple[Any, dict[str, Any]]:
        """Fit again without the answers the clone disagrees with."""
        keep = np.flatnonzero(clone.predict(x) == answer.labels)
        if len(keep) in (0, len(x)):
            return clone, {**chosen, "pruned": 0}
        student = chosen.get("student", self.student).split("/")[0] if self.student == "auto" \
            else self.student
        labels = chosen.get("student", "").split("/")[-1] if self.student == "auto" \
            else self.labels
        again, info = fit_chosen(x[keep], [answer.take(keep)], labels or self.labels, student,
                                 self.hidden, n_classes, self.epochs, self.random_state, pool,
                                 self.name, self.members)
        return again, {**chosen, **info, "pruned": int(len(x) - len(keep))}


def _copies(x: FloatArray, votes: int, jitter: float, spec: Any,
            rng: np.random.Generator) -> FloatArray:
    """Each row, then ``votes - 1`` copies jittered by ``jitter`` of each feature's range
    (integer features moved by whole steps), inside the domain."""
    span = np.asarray(spec.high, dtype=np.float64) - np.asarray(spec.low, dtype=np.float64)
    rep = np.repeat(x, votes, axis=0)
    scale = jitter * span
    if spec.integer_features:  # whole steps: at least half a unit's spread, or no copy moves
        scale = np.where(span > 0, np.maximum(scale, 0.5), 0.0)
    noise = rng.normal(0.0, 1.0, rep.shape) * scale
    noise[::votes] = 0.0  # the point itself
    out = np.clip(rep + noise, spec.low, spec.high)
    return np.round(out) if spec.integer_features else out


def _majority(answer: Answer, votes: int) -> Answer:
    """One answer per training point: the majority label of its copies (ties to the point's
    own), and the mean of the copies' scores that name it."""
    labels = answer.labels.reshape(-1, votes)
    n = len(labels)
    k = int(max(labels.max() + 1, 0 if answer.probabilities is None
                else answer.probabilities.shape[1]))
    counts = np.zeros((n, k), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), votes), labels.ravel()), 1)
    top = counts.max(axis=1)
    own = counts[np.arange(n), labels[:, 0]] == top
    winner = np.where(own, labels[:, 0], counts.argmax(axis=1))
    probs = None
    if answer.probabilities is not None:
        p = answer.probabilities.reshape(n, votes, -1)
        agree = (labels == winner[:, None])[..., None]
        probs = np.nansum(np.where(agree, p, 0.0), axis=1) / agree.sum(axis=1)
        probs = np.where(np.isnan(p).all(axis=1), np.nan, probs)
    return Answer(winner.astype(np.int64), probs, policy=answer.policy)
