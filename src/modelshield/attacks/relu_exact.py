"""Exact extraction of a one-hidden-layer ReLU network from its scores (critical points).

Jagielski et al., "High Accuracy and High Fidelity Extraction of Neural Networks", USENIX
Security 2020; Carlini, Jagielski & Mironov, "Cryptanalytic Extraction of Neural Network
Models", CRYPTO 2020 (their first-layer step). With every class probability, the log-ratios
``log p_k - log p_0`` are the logit differences, and for a network
``z = A relu(W x + b) + c`` each is piecewise linear in x, with a kink wherever a hidden
unit switches: on the hyperplane ``w_i . x + b_i = 0``.

1. Critical points: along a random line through the domain, the log-ratio is piecewise
   linear; an interval whose end slopes differ holds a kink, placed where the two end lines
   meet and checked there (else the interval is halved).
2. Each kink's hyperplane: the gradient's jump across it is parallel to ``w_i``; the
   gradients come from finite differences on both sides (2(d+1) queries). Kinks of one
   unit, met on different lines, give one hyperplane (up to sign and scale); a hyperplane
   is kept once two lines have met it (a blend of two kinks too close together to tell
   apart gives a hyperplane no other line meets).
3. The rest is linear: with the hyperplanes known, relu(-u) = relu(u) - u folds the unknown
   signs into a linear term, so ``z_k - z_0 = sum_i a_ki relu(n_i . x + beta_i) + g_k . x +
   e_k`` and a least-squares fit on fresh queries gives the a, g and e of every log-ratio.

The search stops after ``patience`` lines in a row confirm no new hyperplane (or after
``lines``): a unit whose hyperplane only clips a corner of the domain is met rarely, and
with patience 10 one network of twenty lost two of its 16 units (bench/relu_exact.py).

The clone is functionally equivalent on the domain up to float64 rounding, not a copy of
the weights (a unit's scale and sign are not identifiable from outside). Hidden units that
never switch inside the domain are linear there and fold into g. Needs: full probabilities
of a network with one hidden ReLU layer; refused under rounding, top-k and labels (the
log-ratios must be exact to find the kinks). A binary model that answers 1 - p loses the
log-ratio's precision where p nears 1 (relative error about 1e-16 e^|z|), and with it the
kinks found there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from modelshield.answer import FloatArray
from modelshield.attacks.base import Attack, Session
from modelshield.errors import AttackFailed, AttackRefused, BudgetExhausted, ConfigError
from modelshield.models import ReluNetClone


@dataclass
class ReluExact(Attack):
    """Recover a one-hidden-layer ReLU network exactly from its critical points."""

    name: ClassVar[str] = "relu-exact"
    paper: ClassVar[str] = ("Jagielski et al., USENIX Sec 2020; Carlini, Jagielski & "
                            "Mironov, CRYPTO 2020")
    needs: ClassVar[str] = "every class probability, unrounded"

    lines: int = 200
    patience: int = 25
    tolerance: float = 1e-7
    step: float = 1e-4

    def validate(self) -> None:
        if self.lines < 1 or self.patience < 1:
            raise ConfigError.invalid("lines", "an integer >= 1", self.lines)
        if not 0 < self.tolerance < 1e-2:
            raise ConfigError.invalid("tolerance", "a number in (0, 0.01)", self.tolerance)
        if not 0 < self.step < 1e-1:
            raise ConfigError.invalid("step", "a number in (0, 0.1)", self.step)

    def extract(self, session: Session, pool: FloatArray | None,
                rng: np.random.Generator) -> tuple[Any, dict[str, FloatArray], dict[str, Any]]:
        spec = session.spec
        require_exact_scores(session, self.name)
        probe = _Probe(session, spec.high - spec.low, self.step)
        seen, lines, note = self._search(session, probe, rng)
        planes = [(n, b) for n, b, count in seen if count >= 2]
        if not planes:
            raise AttackFailed(f"{self.name}: no kink in {lines} lines: the model is linear "
                               "on this domain, or not a ReLU network")
        N = np.array([n for n, _ in planes])
        offsets = np.array([b for _, b in planes])
        clone, params, residual = self._fit(session, probe, rng, N, offsets)
        info: dict[str, Any] = {"hidden_units_found": len(N),
                                "hyperplanes_seen_once": len(seen) - len(N),
                                "lines": lines, "fit_max_residual": residual,
                                "scale_free": True}
        if note:
            info["budget_note"] = note
        return clone, params, info

    def _search(self, session: Session, probe: _Probe, rng: np.random.Generator
                ) -> tuple[list[tuple[FloatArray, float, int]], int, str | None]:
        """The hyperplanes met on random lines (normal, offset, lines met on), until
        ``lines`` lines, ``patience`` lines in a row that confirm none, or the budget the
        final fit needs; the lines drawn, and why the budget stopped the search (or None).

        A kink read off a line can be two kinks too close to tell apart, and its
        "hyperplane" then a blend; a unit's true hyperplane is met again on other lines.
        Only hyperplanes found on two lines or more are kept."""
        seen: list[tuple[FloatArray, float, int]] = []
        quiet = lines = 0
        d = session.spec.n_features
        while lines < self.lines and quiet < self.patience:
            # Keep what the final fit needs (3 queries an unknown), and a line's worth more.
            kept = sum(count >= 2 for *_, count in seen)
            if session.remaining < 3 * (kept + d + 1) + 40 * (d + 1):
                return seen, lines, (f"the budget ended the search after {lines} lines, with "
                                     f"{kept} hidden units confirmed; units not met are "
                                     "missing from the clone")
            lines += 1
            try:
                kinks = probe.kinks(rng, self.tolerance)
            except BudgetExhausted:
                break
            quiet = 0 if _confirm(seen, kinks, probe, session) else quiet + 1
        return seen, lines, None

    def _fit(self, session: Session, probe: _Probe, rng: np.random.Generator, N: FloatArray,
             offsets: FloatArray) -> tuple[Any, dict[str, FloatArray], float]:
        """The output layer by least squares on fresh uniform queries, given the hidden
        units' hyperplanes: the clone, its parameters and the largest residual."""
        spec = session.spec
        h, d = len(N), spec.n_features
        n_fit = min(3 * (h + d + 1), session.remaining)
        if n_fit < h + d + 1:
            raise AttackFailed(f"{self.name}: the final fit needs {h + d + 1} queries; "
                               f"{session.remaining} are left")
        x = spec.uniform(n_fit, rng)
        y = probe.log_ratios(x)
        features = np.column_stack([np.maximum(x @ N.T + offsets, 0.0), x, np.ones(n_fit)])
        coef, *_ = np.linalg.lstsq(features, y, rcond=None)
        residual = float(np.abs(features @ coef - y).max())
        A, G, e = coef[:h].T, coef[h:h + d].T, coef[-1]
        clone = ReluNetClone(N, offsets, A, G, e).fit()
        session.checkpoint(clone)
        return clone, {"W": N, "b": offsets, "A": A, "G": G, "e": e}, residual


def _confirm(seen: list[tuple[FloatArray, float, int]],
             kinks: list[tuple[float, FloatArray, FloatArray]], probe: _Probe,
             session: Session) -> int:
    """Match each kink of a line with the hyperplanes ``seen`` (a new one is added to them;
    one met again counts once more); how many this line confirmed (met a second time)."""
    d = session.spec.n_features
    confirmed = 0
    for t, x0, u in kinks:
        x = x0 + t * u
        # A kink on a hyperplane already seen confirms it at no cost.
        i = _on_plane(seen, x, probe.scale)
        if i is None:
            if session.remaining < 3 * (len(seen) + d + 1) + 4 * (d + 1):
                break
            n, beta = probe.hyperplane(x)
            if n is None:
                continue
            i = _match(seen, n, beta)
            if i is None:
                seen.append((n, beta, 1))
                continue
        normal, offset, count = seen[i]
        seen[i] = (normal, offset, count + 1)
        confirmed += count == 1
    return confirmed


class _Probe:
    """Log-ratio queries along lines and around points, through the session."""

    def __init__(self, session: Session, width: FloatArray, step: float) -> None:
        self.session, self.spec = session, session.spec
        self.width = width
        self.step = step

    def log_ratios(self, x: FloatArray) -> FloatArray:
        answer = self.session.query(np.clip(x, self.spec.low, self.spec.high))
        self.session.require(answer, "probabilities")
        assert answer.probabilities is not None
        with np.errstate(divide="ignore"):
            logp = np.log(answer.probabilities)
        if not np.isfinite(logp).all():
            raise AttackFailed("a probability of exactly 0: the log-ratios are lost (the "
                               "model saturates on this domain)")
        return np.asarray(logp[:, 1:] - logp[:, :1])

    def kinks(self, rng: np.random.Generator, tol: float,
              ends: tuple[FloatArray, FloatArray] | None = None
              ) -> list[tuple[float, FloatArray, FloatArray]]:
        """The kinks of the first log-ratio along one chord: a random one of the domain,
        or the one between ``ends``."""
        spec = self.spec
        a, b = spec.uniform(2, rng) if ends is None else ends
        u = b - a
        x0 = a

        def f(ts: FloatArray) -> FloatArray:
            return self.log_ratios(x0 + np.outer(ts, u))[:, 0]

        d = self.step
        fe = f(np.array([0.0, d, 1.0 - d, 1.0]))
        out: list[tuple[float, FloatArray, FloatArray]] = []
        stack = [(0.0, 1.0, fe[0], (fe[1] - fe[0]) / d, fe[3], (fe[3] - fe[2]) / d)]
        scale = max(1.0, float(np.abs(fe).max()))
        while stack and len(out) < 4 * spec.n_features + 256:
            ta, tb, fa, sa, fb, sb = stack.pop()
            if abs(sa - sb) <= tol * scale / d or tb - ta < 4 * d:
                continue
            t = (fb - fa + sa * ta - sb * tb) / (sa - sb)  # where the two end lines meet
            if ta + d < t < tb - d:
                ft = f(np.array([t]))[0]
                if abs(ft - (fa + sa * (t - ta))) <= tol * scale:
                    out.append((t, x0, u))
                    continue
            m = (ta + tb) / 2
            fm = f(np.array([m - d, m, m + d]))
            stack.append((ta, m, fa, sa, fm[1], (fm[1] - fm[0]) / d))
            stack.append((m, tb, fm[1], (fm[2] - fm[1]) / d, fb, sb))
        return out

    @property
    def scale(self) -> float:
        return float(np.linalg.norm(self.width))

    def hyperplane(self, x: FloatArray) -> tuple[FloatArray | None, float]:
        """The unit hyperplane through kink ``x`` (unit normal, offset), from the jump of the
        log-ratios' gradients between its two sides."""
        n, _ = self.jump(x)
        return (None, 0.0) if n is None else (n, float(-n @ x))

    def jump(self, x: FloatArray) -> tuple[FloatArray | None, FloatArray]:
        """The unit normal of the kink at ``x`` (the direction of the jump) and the jump of
        the gradient across it, for the log-ratio whose jump is largest.

        Twice: a first normal from tiny steps, then the gradients again at points a step
        off the kink along that normal, with axis steps too short to cross it (a line that
        meets the kink at a shallow angle would otherwise blend the sides).
        """
        n = _unit(self._jump(x, 1e-6 * self.width, 1e-7 * self.width))
        if n is None:
            return None, np.zeros_like(x)
        off = self.step * self.scale
        jump = self._jump(x, off * n, np.full_like(x, 0.1 * off / np.sqrt(len(x))))
        m = _unit(jump)
        if m is None:
            return None, np.zeros_like(x)
        return m, jump

    def _jump(self, x: FloatArray, side: FloatArray, h: FloatArray,
              column: int | None = None) -> FloatArray:
        dim = self.spec.n_features
        rows = []
        for centre in (x - side, x + side):
            rows.append(centre)
            rows.extend(centre + np.eye(dim) * h)
        y = self.log_ratios(np.array(rows))
        g = [(y[1 + i * (dim + 1): (i + 1) * (dim + 1)] - y[i * (dim + 1)]) / h[:, None]
             for i in range(2)]
        jump = g[1] - g[0]  # (d, c-1): for a first-layer unit each column is parallel to w
        k = int(np.argmax(np.linalg.norm(jump, axis=0))) if column is None else column
        return np.asarray(jump[:, k])


def _unit(v: FloatArray) -> FloatArray | None:
    norm = float(np.linalg.norm(v))
    if norm == 0 or not np.isfinite(norm):
        return None
    return np.asarray(v / norm)


def _on_plane(seen: list[tuple[FloatArray, float, int]], x: FloatArray, scale: float,
              tol: float = 1e-8) -> int | None:
    """The index of the hyperplane in ``seen`` that point ``x`` lies on, or None."""
    for i, (n, b, _) in enumerate(seen):
        if abs(float(n @ x) + b) < tol * scale:
            return i
    return None


def _match(seen: list[tuple[FloatArray, float, int]], n: FloatArray, beta: float,
           tol: float = 1e-6) -> int | None:
    """The index of the hyperplane in ``seen`` that (n, beta) is, up to sign, or None."""
    for i, (m, b, _) in enumerate(seen):
        for s in (1.0, -1.0):
            if np.abs(s * n - m).max() < tol and abs(s * beta - b) < tol * max(1.0, abs(b)):
                return i
    return None


def require_exact_scores(session: Session, attack: str) -> None:
    """Refuse, after one query, an API that takes integers only or answers anything but
    unrounded probabilities: kinks are found on lines through the domain, by exact
    log-ratios."""
    spec = session.spec
    if spec.integer_features:
        raise AttackRefused(attack, "real-valued inputs (lines through the domain)",
                            "an API that takes integers only")
    first = session.query((spec.low + spec.high)[None, :] / 2)
    session.require(first, "probabilities")
    if not _exact(first.probabilities):
        raise AttackRefused(attack, "unrounded probabilities", first.policy)


def _exact(p: FloatArray | None) -> bool:
    """Probabilities look unrounded: not all on a coarse decimal grid."""
    if p is None or np.isnan(p).any():
        return False
    return not np.allclose(p, np.round(p, 6), atol=0, rtol=0)
