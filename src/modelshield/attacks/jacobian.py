"""Jacobian-based dataset augmentation (Papernot et al., AsiaCCS 2017, "Practical Black-Box
Attacks against Machine Learning", Alg. 1).

Start from a small seed set, label it with the oracle, train a substitute; then grow the set
by stepping each point along the sign of the substitute's gradient for the label the oracle
gave it (``x + lambda * sign(dF_y/dx)``), label the new points, retrain, and repeat. The step
flips sign every ``tau`` rounds (the paper's periodic step size) so points do not drift out of
the domain. When a round would double the set past the budget, a random subset of the new
points is kept (the paper's reservoir sampling, in its simplest form).

Needs: labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from modelshield.answer import FloatArray
from modelshield.attacks._students import fit_student
from modelshield.attacks.base import Attack, Session, draw_queries
from modelshield.errors import ConfigError


@dataclass
class JacobianAugmentation(Attack):
    """Grow a substitute's training set along its own gradients (Papernot et al. 2017)."""

    name: ClassVar[str] = "jacobian"
    paper: ClassVar[str] = "Papernot et al., Practical Black-Box Attacks, AsiaCCS 2017"
    needs: ClassVar[str] = "labels"

    seed_size: int = 100
    seed_source: str = "pool"
    step: float = 0.1
    tau: int = 3
    hidden: tuple[int, ...] = (128,)
    epochs: int = 200

    def validate(self) -> None:
        if self.seed_size < 1:
            raise ConfigError.invalid("seed_size", "an integer >= 1", self.seed_size)
        if not 0 < self.step <= 1:
            raise ConfigError.invalid("step", "a number in (0, 1]", self.step)
        if self.tau < 1:
            raise ConfigError.invalid("tau", "an integer >= 1", self.tau)

    def extract(self, session: Session, pool: FloatArray | None,
                rng: np.random.Generator) -> tuple[Any, None, dict[str, Any]]:
        spec = session.spec
        n0 = min(self.seed_size, session.remaining)
        x = draw_queries(self.seed_source, n0, spec, pool, rng, self.name)
        y = session.query(x).labels
        width = spec.high - spec.low
        rounds = 0
        while True:
            sub = fit_student(x, y, self.hidden, spec.n_classes, self.epochs,
                              self.random_state + rounds, pool)
            session.checkpoint(sub)
            if session.remaining <= 0:
                break
            sign = -1.0 if (rounds // self.tau) % 2 else 1.0
            grads = sub.input_gradient(x, y)
            new = np.clip(x + sign * self.step * width * np.sign(grads), spec.low, spec.high)
            if spec.integer_features:
                new = np.round(new)
            if len(new) > session.remaining:
                new = new[rng.choice(len(new), session.remaining, replace=False)]
            x = np.concatenate([x, new])
            y = np.concatenate([y, session.query(new).labels])
            rounds += 1
        return sub, None, {"rounds": rounds}
