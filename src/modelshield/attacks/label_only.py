"""Label-only extraction of linear classifiers.

Two methods, both from the labels alone:

* ``lowd-meek`` — Lowd & Meek, "Adversarial Learning", KDD 2005: find a point on the
  decision boundary by bisection between two differently labelled points, then, for each
  feature j, step off the boundary along j and bisect back along a fixed reference direction
  u; the return distance t_j gives w_j / (w·u) = -t_j / delta. Binary linear models only:
  the recovered boundary is checked from both sides at points away from where it was
  found, and a boundary that is not a hyperplane ends the attack failed.
* ``adaptive`` — Tramèr et al., USENIX Security 2016, Sec. 6.1 ("adaptive retraining"):
  query in rounds, fit a logistic regression to the labels so far, and spend the next round
  on the candidate points the current model is least sure of. Works for any number of classes.
  Candidates are uniform in the domain, or synthesised around the attacker's pool if given.
* ``retraining`` — the same with all queries drawn at random at once (the paper's baseline).

Needs: labels only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.linear_model import LogisticRegression

from modelshield.answer import FloatArray
from modelshield.attacks.base import ASSUMPTION_FAILED, Attack, Session, synthesize
from modelshield.errors import AttackFailed, AttackRefused, ConfigError
from modelshield.models import LinearClone

METHODS = ("lowd-meek", "adaptive", "retraining")
CROSSINGS = 8  # points on a recovered boundary checked from both sides


@dataclass
class LabelOnly(Attack):
    """Steal a linear classifier from labels: Lowd-Meek line search or adaptive retraining."""

    name: ClassVar[str] = "label-only"
    paper: ClassVar[str] = "Lowd & Meek, KDD 2005; Tramèr et al., USENIX Sec 2016"
    needs: ClassVar[str] = "labels"

    method: str = "lowd-meek"
    bits: int = 12
    rounds: int = 10
    candidates: int = 5000

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError.invalid("method", " or ".join(map(repr, METHODS)), self.method)
        if not 4 <= self.bits <= 52:
            raise ConfigError.invalid("bits", "an integer in [4, 52]", self.bits)
        if self.rounds < 1:
            raise ConfigError.invalid("rounds", "an integer >= 1", self.rounds)

    @property
    def steered(self) -> bool:
        return self.method != "retraining"  # the baseline draws every row at once

    def extract(self, session: Session, pool: FloatArray | None,
                rng: np.random.Generator) -> tuple[Any, dict[str, FloatArray] | None, dict[str, Any]]:
        if self.method == "lowd-meek":
            return self._lowd_meek(session, pool, rng)
        return self._retrain(session, pool, rng, adaptive=self.method == "adaptive")

    # -- Lowd & Meek ---------------------------------------------------------------------
    def _lowd_meek(self, session: Session, pool: FloatArray | None,
                   rng: np.random.Generator) -> tuple[Any, dict[str, FloatArray], dict[str, Any]]:
        spec = session.spec
        if spec.n_classes != 2:
            raise AttackRefused(self.name, "a binary model (Lowd-Meek)",
                                f"a {spec.n_classes}-class API")
        # The fewest queries it can finish in: a pair of opposite labels (4), the bisection
        # to the boundary, then per feature one probe, one bracket and the bisection.
        need = 4 + 2 * self.bits + spec.n_features * (2 + self.bits)
        if session.remaining < need:
            raise AttackFailed(f"Lowd-Meek needs at least {need} queries for "
                               f"{spec.n_features} features at bits={self.bits}; the budget is "
                               f"{session.remaining}. Nothing was spent (fewer bits need fewer "
                               "queries, at some precision).")
        neg, pos = self._opposite_pair(session, pool, rng)
        u = pos - neg
        x0 = self._bisect(session, neg, u, 0.0, 1.0)  # w·x0 + b ≈ 0
        width = spec.high - spec.low
        deltas = 0.05 * width
        ratios = np.empty(spec.n_features)
        for j in range(spec.n_features):
            start = x0.copy()
            start[j] += deltas[j]
            ratios[j] = -self._return_distance(session, start, u) / deltas[j]
        # w = ratios * (w·u) with w·u > 0 (pos is positive): fix the scale at w·u = 1.
        w = ratios
        b = -float(w @ x0)
        clone = LinearClone(w[None, :], np.array([b])).fit()
        info: dict[str, Any] = {"scale_free": True}
        info.update(self._check_boundary(session, x0, w, pool, rng))
        session.checkpoint(clone)
        return clone, {"coef": w[None, :], "intercept": np.array([b])}, info

    def _check_boundary(self, session: Session, x0: FloatArray, w: FloatArray,
                        pool: FloatArray | None, rng: np.random.Generator) -> dict[str, Any]:
        """Whether the target has the linear boundary that was recovered: points on it,
        away from where it was found, stepped a little to either side along its normal,
        must answer on those sides (``CROSSINGS`` pairs of queries, from what the budget
        has left). A curved boundary, or none, fails: status failed with the count."""
        spec = session.spec
        n = min(CROSSINGS, session.remaining // 2)
        if n < 1 or not np.any(w):
            return {"budget_note": "no budget left to check the recovered boundary: "
                    "Lowd-Meek's linear assumption is unverified"}
        # In the domain's unit cube, where each feature weighs alike: the attacker's rows
        # (else the domain's) moved onto the recovered hyperplane, kept where both probes,
        # 1% of the cube off it along its normal, stay inside.
        width = spec.high - spec.low
        u = w * width / np.linalg.norm(w * width)
        rows = pool if pool is not None and len(pool) else spec.uniform(50 * n, rng)
        z = (rows - spec.low) / width
        z -= np.outer((z - (x0 - spec.low) / width) @ u, u)
        inside = np.all((z - 0.01 * np.abs(u) >= 0) & (z + 0.01 * np.abs(u) <= 1), axis=1)
        on = spec.low + width * z[inside][rng.permutation(int(inside.sum()))[:n]]
        step = 0.01 * width * u
        if len(on) == 0:
            return {"budget_note": "no point of the recovered boundary inside the domain "
                    "to check it at: Lowd-Meek's linear assumption is unverified"}
        n = len(on)
        labels = session.query(np.concatenate([on - step, on + step])).labels
        wrong = int(np.sum(labels[:n] != 0) + np.sum(labels[n:] != 1))
        out: dict[str, Any] = {"boundary_check": f"{2 * n - wrong} of {2 * n} sides right"}
        if wrong > 0:
            out[ASSUMPTION_FAILED] = (
                f"no usable linear boundary: {wrong} of {2 * n} points stepped off the "
                "recovered boundary answer on the wrong side; the target is not a binary "
                "linear model (try method=adaptive, or knockoff)")
        return out

    def _opposite_pair(self, session: Session, pool: FloatArray | None,
                       rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
        spec = session.spec
        for attempt in range(40):
            if pool is not None and len(pool) >= 4:
                cand = pool[rng.choice(len(pool), 4, replace=False)]
            else:
                scale = 0.5 ** (attempt // 3)
                cand = spec.low + scale * (spec.high - spec.low) * rng.uniform(
                    0, 1, (4, spec.n_features))
            labels = session.query(cand).labels
            if (labels == 0).any() and (labels == 1).any():
                return cand[labels == 0][0], cand[labels == 1][0]
        raise ConfigError("found no two points of different classes; give the attacker a pool")

    def _bisect(self, session: Session, neg: FloatArray, u: FloatArray,
                lo: float, hi: float) -> FloatArray:
        """Bisect t in [lo, hi] for the label change along neg + t·u (label 0 at lo)."""
        for _ in range(self.bits * 2):
            mid = (lo + hi) / 2
            if session.query(neg + mid * u).labels[0] == 0:
                lo = mid
            else:
                hi = mid
        return np.asarray(neg + (lo + hi) / 2 * u)

    def _return_distance(self, session: Session, start: FloatArray, u: FloatArray) -> float:
        """The t with start + t·u on the boundary: bracket by doubling, then bisect."""
        positive = session.query(start).labels[0] == 1
        step = -0.05 if positive else 0.05  # move toward the other class along u
        inner, outer = 0.0, step
        for _ in range(60):
            if (session.query(start + outer * u).labels[0] == 1) != positive:
                break
            inner, outer = outer, outer * 2
        else:
            return 0.0 if abs(outer) < 1e-12 else outer  # no change: w_j ~ 0 relative to w·u
        for _ in range(self.bits):
            mid = (inner + outer) / 2
            if (session.query(start + mid * u).labels[0] == 1) == positive:
                inner = mid
            else:
                outer = mid
        return (inner + outer) / 2

    # -- (adaptive) retraining -------------------------------------------------------------
    def _retrain(self, session: Session, pool: FloatArray | None, rng: np.random.Generator,
                 adaptive: bool) -> tuple[Any, dict[str, FloatArray], dict[str, Any]]:
        spec = session.spec
        budget = session.remaining
        rounds = self.rounds if adaptive else 1
        per_round = max(budget // rounds, spec.n_features + 1)
        def draw(n: int) -> FloatArray:
            if pool is not None and len(pool):
                return synthesize(pool, n, spec, rng)
            return spec.uniform(n, rng)

        X = draw(min(per_round, budget))
        y = session.query(X).labels
        model = None
        while True:
            model = _fit_lr(X, y, spec.n_classes)
            session.checkpoint(model)
            n = min(per_round, session.remaining)
            if n <= 0:
                break
            cand = draw(max(self.candidates, n))
            if model is not None and adaptive:
                proba = model.predict_proba(cand)
                top2 = np.sort(proba, axis=1)[:, -2:]
                cand = cand[np.argsort(top2[:, 1] - top2[:, 0])[:n]]
            else:
                cand = cand[:n]
            X = np.concatenate([X, cand])
            y = np.concatenate([y, session.query(cand).labels])
        assert model is not None
        params = {"coef": model.coef_, "intercept": model.intercept_}
        return model, params, {"rounds": rounds, "scale_free": True}


def _fit_lr(X: FloatArray, y: np.ndarray, n_classes: int) -> LinearClone:
    """A nearly unregularised logistic regression on the labels, as a LinearClone."""
    if len(np.unique(y)) < 2:
        c = 1 if n_classes == 2 else n_classes
        coef, intercept = np.zeros((c, X.shape[1])), np.zeros(c)
        if n_classes == 2:
            intercept[0] = 1.0 if y[0] == 1 else -1.0
        else:
            intercept[int(y[0])] = 1.0
        return LinearClone(coef, intercept).fit()
    mean, scale = X.mean(axis=0), np.maximum(X.std(axis=0), 1e-12)
    lr = LogisticRegression(C=1e4, max_iter=5000).fit((X - mean) / scale, y)
    coef = lr.coef_ / scale  # back to the raw input space
    intercept = lr.intercept_ - coef @ mean
    if n_classes > 2 and coef.shape[0] != n_classes:  # classes never seen get -inf-ish scores
        full_c = np.zeros((n_classes, X.shape[1]))
        full_i = np.full(n_classes, -1e6)
        full_c[lr.classes_], full_i[lr.classes_] = coef, intercept
        coef, intercept = full_c, full_i
    return LinearClone(coef, intercept).fit()
