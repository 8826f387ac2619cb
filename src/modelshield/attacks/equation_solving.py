"""Equation-solving extraction (Tramèr, Zhang, Juels, Reiter, Ristenpart; USENIX Security 2016).

Logistic models: a returned probability vector gives, for every class k, the linear equation
``log p_k - log p_r = (w_k - w_r)·x + (b_k - b_r)``. With full-precision probabilities,
``d + 1`` queries in general position determine every weight (up to the softmax shift, which
changes no output). Since d+1 equations always have a solution, ``exact`` is claimed only
after the solved model reproduces ``verify`` held-back answers to float precision; where it
does not and the answers are smooth (a query a hair's breadth away barely moves them, where
keyed noise would redraw), the model family does not match and the attack ends failed.
The paper counts ``c(d+1)`` unknowns for a multinomial model and solves
all of them; the log-ratio form needs only ``d + 1`` queries because each answer gives
``c - 1`` equations. Rounded or noisy scores: more queries and weighted least squares.

Neural networks (Sec. 4.2): fit a model of the victim's architecture to the returned
probabilities (L-BFGS in float64, best of a few restarts). We fit the logits (class-centred
log-probabilities) by least squares rather than the probabilities by KL: the log-ratios are
exact equations in the network's output, and KL's gradient vanishes where the victim is
confident. Queries come from the attacker's pool by default (``source``).

Needs: every class probability (full, rounded or noisy). Refused under label-only and top-k.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from modelshield.answer import Answer, FloatArray
from modelshield.attacks.base import ASSUMPTION_FAILED, Attack, Session, draw_queries
from modelshield.errors import AttackFailed, ConfigError
from modelshield.models import LinearClone, TorchMLPClassifier


@dataclass
class EquationSolving(Attack):
    """Solve for a logistic model's weights, or fit the victim's MLP architecture, from scores."""

    name: ClassVar[str] = "equation-solving"
    paper: ClassVar[str] = "Tramèr et al., Stealing ML Models via Prediction APIs, USENIX Sec 2016"
    needs: ClassVar[str] = "probabilities"

    model: str = "logistic"
    hidden: tuple[int, ...] = (20,)
    n_queries: int | None = None
    spread: float = 0.5
    source: str = "pool"
    verify: int = 3
    restarts: int = 3
    max_iter: int = 3000

    def validate(self) -> None:
        if self.model not in {"logistic", "mlp"}:
            raise ConfigError.invalid("model", "'logistic' or 'mlp'", self.model)
        if not 0 < self.spread <= 1:
            raise ConfigError.invalid("spread", "a number in (0, 1]", self.spread)
        if self.verify < 0:
            raise ConfigError.invalid("verify", "an integer >= 0", self.verify)
        if self.n_queries is not None and self.n_queries < 1:
            raise ConfigError.invalid("n_queries", "an integer >= 1 or None", self.n_queries)

    def extract(self, session: Session, pool: FloatArray | None,
                rng: np.random.Generator) -> tuple[Any, dict[str, FloatArray] | None, dict[str, Any]]:
        if self.model == "mlp":
            return self._mlp(session, pool, rng)
        return self._logistic(session, pool, rng)

    # -- logistic models ---------------------------------------------------------------
    def _logistic(self, session: Session, pool: FloatArray | None,
                  rng: np.random.Generator) -> tuple[Any, dict[str, FloatArray], dict[str, Any]]:
        spec = session.spec
        centre = pool.mean(axis=0) if pool is not None and len(pool) else (spec.low + spec.high) / 2
        target = min(self.n_queries or session.budget, session.budget)
        n = min(target if self.n_queries else spec.n_features + 1, session.remaining)
        x = self._around(centre, self.spread, n, spec, rng)
        # One query tells whether the policy lets the scores out, before the rest are spent.
        first = session.query(x[:1])
        session.require(first, "probabilities")
        answer = first if n == 1 else _stack(first, session.query(x[1:]))
        xs, ps = [x], [_probs(answer)]
        info: dict[str, Any] = {"exact": False}
        if self.n_queries is None and _looks_exact(ps) and _rank_ok(xs, ps):
            info.update(self._check_exact(session, centre, rng, xs, ps))
        if not (info["exact"] or info.get("unverified") or ASSUMPTION_FAILED in info):
            self._near_boundaries(session, pool, rng, xs, ps, target)
        coef, intercept = _solve_logistic(np.concatenate(xs), np.concatenate(ps), info["exact"])
        clone = LinearClone(coef, intercept).fit()
        session.checkpoint(clone)
        return clone, {"coef": coef, "intercept": intercept}, info

    def _check_exact(self, session: Session, centre: FloatArray, rng: np.random.Generator,
                     xs: list[FloatArray], ps: list[FloatArray]) -> dict[str, Any]:
        """Whether the model solved from d+1 answers is exact: it must reproduce ``verify``
        held-back answers to float precision (d+1 equations always have a solution, so the
        solved answers alone prove nothing). Where it does not, one more query, a hair's
        breadth from a held-back point, tells noise from a wrong model family: a logistic
        model's answer barely moves there, keyed noise redraws. Smooth answers that the
        solved model misses are not a logistic model's: the attack stops, failed."""
        d = session.spec.n_features
        if not self.verify or session.remaining < self.verify + 1:
            return {"unverified": True,
                    "budget_note": "the solved model was not checked against held-back "
                    "answers (verify=0 or no budget left for it): exactness unverified"}
        coef, intercept = _solve_logistic(xs[0], ps[0], True)
        check = self._around(centre, self.spread, self.verify, session.spec, rng)
        p = _probs(session.query(check))
        xs.append(check)
        ps.append(p)
        solved = LinearClone(coef, intercept).fit().predict_proba(check)
        error = float(np.max(np.abs(solved - p)))
        if np.allclose(solved, p, rtol=1e-7, atol=1e-12):
            return {"exact": True, "held_back_error": error}
        near = check[:1].copy()
        step = 1e-9 * (session.spec.high - session.spec.low)
        near[0] = np.where(near[0] + step <= session.spec.high, near[0] + step, near[0] - step)
        p_near = _probs(session.query(near))
        xs.append(near)
        ps.append(p_near)
        moved = float(np.max(np.abs(p_near - p[:1])))
        out: dict[str, Any] = {"held_back_error": error, "hair_move": moved}
        if moved < 0.01 * error:
            out[ASSUMPTION_FAILED] = (
                f"the model family does not match: the logistic model solved from {d + 1} "
                f"answers misses {self.verify} held-back answers by up to {error:.2g} in "
                "probability, though the answers are smooth and noise-free; the target is "
                "not a logistic model of its inputs (try model=mlp, or knockoff)")
        return out

    def _near_boundaries(self, session: Session, pool: FloatArray | None,
                         rng: np.random.Generator, xs: list[FloatArray], ps: list[FloatArray],
                         target: int) -> None:
        """Rounded or noisy scores: spend the budget where each class's score is informative.

        For each class k, find a point on its boundary with the reference class and query
        around it, shrinking the neighbourhood while most answers round k or the reference
        to 0 or 1 (such answers carry no equation).
        """
        spec = session.spec
        d = spec.n_features
        ref = int(np.argmax(np.concatenate(ps).mean(axis=0)))
        others = [k for k in range(spec.n_classes) if k != ref]
        for i, k in enumerate(others):
            share = (target - session.used) // (len(others) - i)
            stop = session.used + share
            centre = _boundary_point(session, pool, rng, ref, k, stop)
            spread = self.spread
            while centre is not None and stop - session.used > 0:
                x = self._around(centre, spread, min(d + 1, stop - session.used), spec, rng)
                p = _probs(session.query(x))
                xs.append(x)
                ps.append(p)
                inner = (p[:, [k, ref]] > 0) & (p[:, [k, ref]] < 1)
                if inner.all(axis=1).mean() < 0.5:
                    spread /= 2

    @staticmethod
    def _around(centre: FloatArray, spread: float, n: int, spec: Any,
                rng: np.random.Generator) -> FloatArray:
        width = spread * (spec.high - spec.low)
        # Inside the published domain: a gateway refuses anything outside it.
        return np.asarray(np.clip(centre + width * rng.uniform(-0.5, 0.5, (n, spec.n_features)),
                                  spec.low, spec.high))

    # -- neural networks ----------------------------------------------------------------
    def _mlp(self, session: Session, pool: FloatArray | None,
             rng: np.random.Generator) -> tuple[Any, None, dict[str, Any]]:
        n = min(self.n_queries or session.budget, session.remaining)
        x = draw_queries(self.source, n, session.spec, pool, rng, self.name)
        first = session.query(x[:1])  # one query tells a refusal
        session.require(first, "probabilities")
        answer = first if n == 1 else _stack(first, session.query(x[1:]))
        assert answer.probabilities is not None
        best, best_loss = None, np.inf
        for r in range(self.restarts):
            student = TorchMLPClassifier(
                self.hidden, n_classes=session.spec.n_classes, optimizer="lbfgs",
                epochs=self.max_iter, weight_decay=0.0, loss="logits",
                random_state=self.random_state * 1000 + r,
            ).fit(x, answer.probabilities)
            loss = _kl(answer.probabilities, student.predict_proba(x))
            if loss < best_loss:
                best, best_loss = student, loss
        session.checkpoint(best)
        # Each answer gives c-1 equations (log-ratios); the assumed architecture has this many
        # unknowns. Fewer equations, or a fit that misses its own answers, is said, not hidden.
        c, d = session.spec.n_classes, session.spec.n_features
        widths = [d, *self.hidden, c]
        unknowns = sum((a + 1) * b for a, b in itertools.pairwise(widths))
        equations = n * (c - 1)
        assert best is not None
        fit = float(np.mean(best.predict(x) == answer.labels))
        info: dict[str, Any] = {"train_kl": float(best_loss), "unknowns": unknowns,
                                "equations": equations, "train_agreement": fit}
        notes = []
        if equations < unknowns:
            notes.append(f"{n} answers give {equations:,} equations for the {unknowns:,} "
                         f"unknowns of a {'-'.join(map(str, widths))} network: "
                         "underdetermined, the copy is only pinned down near the queries")
        if fit < 0.99:
            notes.append(f"the fit agrees with only {fit:.0%} of its own answers: the "
                         f"assumed architecture (hidden={self.hidden}) may not be the "
                         "victim's, or the fit did not converge")
        if notes:
            info["budget_note"] = "; ".join(notes)
        return best, None, info


def _boundary_point(session: Session, pool: FloatArray | None, rng: np.random.Generator,
                    a_class: int, b_class: int, stop: int, steps: int = 30) -> FloatArray | None:
    """A point on the boundary of class ``a_class`` found by bisection, or None.

    Looks for one point labelled ``a_class`` and one labelled ``b_class`` (from the pool, or
    in boxes of shrinking size at the domain's low corner, where real data often sits) and
    bisects between them; the far end may land on a third class, which is still a boundary.
    """
    spec = session.spec
    found: dict[int, FloatArray] = {}
    for attempt in range(40):
        if session.used + 8 + steps > stop:
            return None
        if pool is not None and len(pool) >= 8:
            cand = pool[rng.choice(len(pool), 8, replace=False)]
        else:
            scale = 0.5 ** (attempt // 3)
            cand = spec.low + scale * (spec.high - spec.low) * rng.uniform(0, 1, (8, spec.n_features))
        for row, label in zip(cand, session.query(cand).labels, strict=True):
            found.setdefault(int(label), row)
        if a_class in found and (b_class in found or len(found) > 1):
            break
    else:
        return None
    a = found[a_class]
    b = found.get(b_class, next(v for k, v in found.items() if k != a_class))
    for _ in range(steps):
        mid = (a + b) / 2
        if session.query(mid).labels[0] == a_class:
            a = mid
        else:
            b = mid
    return np.asarray((a + b) / 2)


def _stack(a: Answer, b: Answer) -> Answer:
    """Two answers of consecutive rows as one."""
    return Answer(labels=np.concatenate([a.labels, b.labels]),
                  probabilities=np.concatenate([a.probabilities, b.probabilities])
                  if a.probabilities is not None and b.probabilities is not None else None,
                  policy=a.policy)


def _probs(answer: Answer) -> FloatArray:
    assert answer.probabilities is not None
    return answer.probabilities


def _solve_logistic(X: FloatArray, P: FloatArray,
                    exact: bool = True) -> tuple[FloatArray, FloatArray]:
    """Least squares on log-ratios; returns (coef, intercept) in LinearClone form.

    The reference class is the one with the largest mean score. Exact zeros carry no
    equation. For inexact (rounded, noisy) scores an equation's weight is the inverse of
    the first-order error of its log-ratio, so near-zero scores count little.
    """
    n, d = X.shape
    c = P.shape[1]
    A = np.column_stack([X, np.ones(n)])
    ref = int(np.argmax(P.mean(axis=0)))
    with np.errstate(divide="ignore"):
        logp = np.log(P)
    theta = np.zeros((c, d + 1))
    for k in range(c):
        if k == ref:
            continue
        ok = (P[:, k] > 0) & (P[:, ref] > 0)
        if ok.sum() < d + 1:
            raise AttackFailed(f"only {ok.sum()} usable answers for class {k}; need {d + 1}: "
                               "give a larger budget")
        w = np.ones(int(ok.sum())) if exact else \
            1.0 / np.sqrt(1.0 / P[ok, k] ** 2 + 1.0 / P[ok, ref] ** 2)
        y = logp[ok, k] - logp[ok, ref]
        theta[k], *_ = np.linalg.lstsq(A[ok] * w[:, None], y * w, rcond=None)
    if c == 2:  # binary: the positive class against the negative one
        sign = 1.0 if ref == 0 else -1.0
        row = theta[1] if ref == 0 else theta[0]
        return sign * row[None, :d], np.array([sign * row[d]])
    return theta[:, :d], theta[:, d]


def _looks_exact(ps: list[FloatArray]) -> bool:
    """True unless the scores look rounded (all on a grid of at most 8 decimals)."""
    p = np.concatenate(ps)
    scaled = p * 1e8
    return not bool(np.all(np.abs(scaled - np.round(scaled)) < 1e-6))


def _rank_ok(xs: list[FloatArray], ps: list[FloatArray]) -> bool:
    P = np.concatenate(ps)
    if not (P > 0).all():
        return False
    X = np.concatenate(xs)
    A = np.column_stack([X, np.ones(len(X))])
    return bool(np.linalg.matrix_rank(A) == A.shape[1])


def _kl(p: FloatArray, q: FloatArray) -> float:
    p = np.clip(p, 1e-300, 1)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(np.clip(q, 1e-300, 1))), axis=1)))


def relative_parameter_error(recovered: dict[str, FloatArray],
                             true: dict[str, FloatArray]) -> float:
    """max |recovered - true| / max |true| over all weights and intercepts.

    Multinomial models are compared modulo the softmax shift (class-centred parameters).
    Normalised by the largest weight rather than elementwise, since weights of features
    that never vary in the training data are ~0 and any relative error on them is noise.
    """
    rc, tc = np.atleast_2d(recovered["coef"]), np.atleast_2d(true["coef"])
    ri, ti = np.atleast_1d(recovered["intercept"]), np.atleast_1d(true["intercept"])
    if rc.shape != tc.shape:
        return float("inf")
    if rc.shape[0] > 1:  # softmax invariance: compare class-centred parameters
        rc, tc = rc - rc.mean(axis=0), tc - tc.mean(axis=0)
        ri, ti = ri - ri.mean(), ti - ti.mean()
    rec = np.concatenate([rc.ravel(), ri])
    tru = np.concatenate([tc.ravel(), ti])
    return float(np.max(np.abs(rec - tru)) / np.max(np.abs(tru)))


__all__ = ["EquationSolving", "relative_parameter_error"]
