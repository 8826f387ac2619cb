"""Knockoff / Copycat substitute training.

Orekondy, Schiele & Fritz, "Knockoff Nets", CVPR 2019; Correia-Silva et al., "Copycat CNN",
IJCNN 2018. Query the victim on inputs the attacker can get — uniform noise in the domain,
their own natural data (the pool), or synthetic points mixed from it — and train a student
of the attacker's chosen architecture on the answers: on the returned probabilities (soft
labels) or on the labels alone (hard); "auto" uses the scores when the policy returns them.
Soft labels are matched as logits: squared error on class-centred log-probabilities, each
clipped at 1e-6 so a 0 probability never makes a log(0). The papers use cross-entropy
(``labels="soft-kl"``), which learns less per query when the victim is confident. The
student is an MLP, a random forest or gradient boosting, or (``student="auto"``, the
default) chosen from a fifth of the answers held out (see ``_students``). Every loop is
bounded by the budget.

Needs: labels (hard) or class scores (soft; top-k scores are completed by spreading the
withheld mass evenly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from modelshield.answer import Answer, FloatArray
from modelshield.attacks._students import (
    check_labels,
    check_student,
    checkpoint_sizes,
    fit_chosen,
)
from modelshield.attacks.base import QUERY_SOURCES, Attack, Session, draw_queries
from modelshield.errors import ConfigError


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
    checkpoints: tuple[int, ...] = field(default=())

    def validate(self) -> None:
        if self.source not in QUERY_SOURCES:
            raise ConfigError.invalid("source", " or ".join(map(repr, QUERY_SOURCES)),
                                      self.source)
        check_labels(self.labels)
        check_student(self.student, self.labels)

    def extract(self, session: Session, pool: FloatArray | None,
                rng: np.random.Generator) -> tuple[Any, None, dict[str, Any]]:
        spec = session.spec
        budget = session.remaining
        x_all = draw_queries(self.source, budget, spec, pool, rng, self.name)
        answers: list[Answer] = []
        done = 0
        if self.labels in ("soft", "soft-kl"):  # one query tells a refusal, before a batch is spent
            answers.append(session.query(x_all[:1]))
            session.require(answers[0], "scores")
            done = 1
        clone = None
        chosen: dict[str, Any] = {}
        for size in checkpoint_sizes(budget, self.checkpoints):
            if size > done:
                answers.append(session.query(x_all[done:size]))
            done = size
            clone, chosen = fit_chosen(x_all[:size], answers, self.labels, self.student,
                                       self.hidden, spec.n_classes, self.epochs,
                                       self.random_state, pool, self.name)
            session.checkpoint(clone)
        return clone, None, {"source": self.source, "labels": self.labels, **chosen}
