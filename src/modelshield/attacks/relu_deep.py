"""Exact extraction of a network with two hidden ReLU layers from its scores.

Carlini, Jagielski & Mironov, "Cryptanalytic Extraction of Neural Network Models", CRYPTO
2020, for a network ``z = a . relu(W2 relu(W1 x + b1) + b2) + c`` (and one such output per
log-ratio ``log p_k - log p_0``). The log-ratios are piecewise linear in x; every kink lies
where a unit of either layer switches.

1. **Critical points** along random chords of the domain, as in ``relu-exact``. Each is
   read again a step off on either side along its normal: the two linear pieces place the
   kink exactly, and give the jump of the gradient across it. Two kinks closer than the
   step (where two surfaces cross) blend into one jump that no unit has; the log-ratio at
   the placed kink, and a reading fifty times closer, expose them, and they are dropped.
2. **First layer.** A first-layer unit's kinks lie on one hyperplane through the whole
   domain; a second-layer unit's lie on a surface that bends wherever a first-layer unit
   switches. A hyperplane met on two chords is checked at a few random points of it across
   the domain: it is the first layer's only if the log-ratio kinks there too.
3. **First-layer signs.** A hyperplane gives ``w_i`` up to scale and sign, and the second
   layer, being nonlinear, needs the sign. At a second-layer unit's kink the gradient's
   jump is ``a_j sum_k W2[j,k] w_k`` over the first-layer units active there, so it lies in
   the span of exactly those normals. When fewer than d are active, the smallest set of
   normals whose span holds the jump is that active set; with the side of each hyperplane
   the point is on, it gives every unit's sign. Each such kink votes; the majority wins.
   This span test is exact but costs sum_m C(h1, m) subsets, and is refused beyond
   ``max_subsets``. There (``signs="auto"``), or when asked (``signs="wiggle"``), the signs
   come in polynomial time from Canales-Martinez et al.'s neuron wiggle (EUROCRYPT 2024):
   at a point of a unit's hyperplane, a small move that changes that unit and leaves the
   others as still as it can moves the output more on the side where the unit is on.
   Their wiggle is a statistical vote when the layer has more units than inputs; here a
   move that leaves one side exactly still certifies the sign, and moves that spare the
   units the votes say may be on make such certificates there too (``wiggle_signs``).
4. **Second layer.** With the first layer known, each second-layer kink's jump solved
   against the active units' normals gives that unit's weights on them, up to one scale,
   and its offset from the kink's position. Kinks of one unit are matched by their common
   weights and merged; a kink with more than d units active joins a unit whose other
   weights are known. A kink met once is looked at again beside it; a weight no kink
   showed is sought by walking along the unit's known surface to that first-layer unit's
   hyperplane and crossing the surface there. Each unit's weights are then solved from
   all its kinks at once (the null vector of their equations).
5. **The rest is linear.** relu(-u) = relu(u) - u folds the second layer's unknown signs
   and scales into a term linear in the first layer's output h, so a least-squares fit on
   fresh queries of ``[relu(z2), h, 1]`` gives the output layer. Points the fit leaves
   (on a trimmed fit) point at a unit that switches only in a corner; chords from them
   find it. A weight still unseen takes a large value of the sign that fits best (the
   unit is then on, or off, wherever that first-layer unit is active). Last, every
   parameter is refined at once by Levenberg-Marquardt on the fit's answers.

The clone is functionally equivalent on the domain, not a copy of the weights (each unit's
scale, the second layer's signs and the order of units are not identifiable). Needs every
first-layer unit to switch inside the domain and answers precise enough to place kinks
(a binary head that answers 1 - p loses them where p nears 1); refused under rounding,
top-k and labels, like ``relu-exact``. A second-layer unit that switches only in a sliver
of the domain can be missed, and the clone is then wrong there (bench/relu_exact_deep.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from math import comb
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from modelshield.answer import FloatArray
from modelshield.attacks.base import ASSUMPTION_FAILED, Attack, Session
from modelshield.attacks.relu_exact import _match, _on_plane, _Probe, require_exact_scores
from modelshield.errors import AttackFailed, AttackRefused, BudgetExhausted, ConfigError
from modelshield.models import Relu2NetClone

Params = tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray,
               FloatArray]
SIGN_METHODS = ("auto", "span", "wiggle")


@dataclass
class ReluExactDeep(Attack):
    """Recover a two-hidden-layer ReLU network from its critical points, signs included."""

    name: ClassVar[str] = "relu-exact-2"
    paper: ClassVar[str] = ("Carlini, Jagielski & Mironov, CRYPTO 2020 (first-layer signs "
                            "by a span test, or Canales-Martinez et al.'s neuron wiggle, "
                            "EUROCRYPT 2024)")
    needs: ClassVar[str] = "every class probability, unrounded"

    lines: int = 4000
    patience: int = 40
    tolerance: float = 1e-7
    step: float = 1e-4
    checks: int = 4
    signs: str = "auto"
    sign_votes: int = 9
    max_subsets: int = 300_000
    wiggles: int = 15
    fit_queries: int = 16000
    fit_tolerance: float = 1e-6
    rounds: int = 8
    polish: bool = True

    def validate(self) -> None:
        if self.signs not in SIGN_METHODS:
            raise ConfigError.invalid("signs", " or ".join(map(repr, SIGN_METHODS)), self.signs)
        for key in ("lines", "patience", "checks", "sign_votes", "max_subsets", "wiggles"):
            if getattr(self, key) < 1:
                raise ConfigError.invalid(key, "an integer >= 1", getattr(self, key))
        if self.fit_queries < 1 or self.rounds < 0:
            raise ConfigError.invalid("fit_queries" if self.fit_queries < 1 else "rounds",
                                      "an integer >= 1 (rounds: >= 0)",
                                      min(self.fit_queries, self.rounds))
        if not 0 < self.fit_tolerance < 1:
            raise ConfigError.invalid("fit_tolerance", "a number in (0, 1)", self.fit_tolerance)
        if not 0 < self.tolerance < 1e-2:
            raise ConfigError.invalid("tolerance", "a number in (0, 0.01)", self.tolerance)
        if not 0 < self.step < 1e-1:
            raise ConfigError.invalid("step", "a number in (0, 0.1)", self.step)

    def extract(self, session: Session, pool: FloatArray | None,
                rng: np.random.Generator) -> tuple[Any, dict[str, FloatArray], dict[str, Any]]:
        spec = session.spec
        require_exact_scores(session, self.name)
        run = _Run(self, session, _Probe(session, spec.high - spec.low, self.step), rng)
        run.first_layer()
        run.choose_signs()
        run.second_layer()
        return run.fit()


@dataclass
class _Neuron:
    """A second-layer unit as far as its kinks have shown it: weights (NaN where unseen)."""

    row: FloatArray
    offset: float
    hits: int = 1
    points: list[tuple[FloatArray, FloatArray]] = field(default_factory=list)  # (x, jump)


@dataclass
class _Run:
    attack: ReluExactDeep
    session: Session
    probe: _Probe
    rng: np.random.Generator
    planes: list[tuple[FloatArray, float, int]] = field(default_factory=list)
    candidates: list[tuple[FloatArray, float, int]] = field(default_factory=list)
    rejected: int = 0
    points: list[tuple[FloatArray, FloatArray]] = field(default_factory=list)
    lines: int = 0
    sign: FloatArray | None = None
    votes: FloatArray | None = None
    voters: int = 0
    sign_method: str = ""
    counts: npt.NDArray[np.int_] | None = None
    exact: FloatArray | None = None
    wiggle_queries: int = 0
    neurons: list[_Neuron] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    blends: int = 0

    @property
    def d(self) -> int:
        return self.session.spec.n_features

    def _jump(self, x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray] | None:
        """The kink near x, placed exactly, with its unit normal and the jump of the
        gradient across it (for the log-ratio whose jump is largest); None for a blend.

        A first normal from tiny steps (as ``relu-exact``), then values and gradients a
        step off on either side along it: the two linear pieces meet where the kink is,
        and the log-ratio there must lie on them. Two kinks closer than the step (where
        two surfaces cross) blend into one jump and miss that check, and are dropped: their
        jump would read as a unit's weights that no unit has, and recur wherever the two
        surfaces cross."""
        probe = self.probe
        first = probe._jump(x, 1e-6 * probe.width, 1e-7 * probe.width)
        norm = float(np.linalg.norm(first))
        if norm == 0 or not np.isfinite(norm):
            return None
        n = first / norm
        off = probe.step * probe.scale
        h = 0.1 * off / np.sqrt(self.d)
        rows = []
        for centre in (x - off * n, x + off * n):
            rows.append(centre)
            rows.extend(centre + np.eye(self.d) * h)
        y = probe.log_ratios(np.array(rows))
        f = [y[i * (self.d + 1)] for i in range(2)]
        g = [(y[1 + i * (self.d + 1): (i + 1) * (self.d + 1)] - f[i]) / h for i in range(2)]
        jump = g[1] - g[0]
        k = int(np.argmax(np.linalg.norm(jump, axis=0)))
        size = float(np.linalg.norm(g[0][:, k]) + np.linalg.norm(g[1][:, k]))
        if np.linalg.norm(jump[:, k]) <= 1e-6 * size:
            # No kink within a step: the chord search met two and placed one between.
            return None
        lo, hi = float(g[0][:, k] @ n), float(g[1][:, k] @ n)
        if lo == hi:
            return None
        t = (f[0][k] - f[1][k] + off * (lo + hi)) / (lo - hi)
        if not -off < t < off:
            return None
        at = x + t * n
        value = probe.log_ratios(at[None, :])[0, k]
        line = f[0][k] + (t + off) * lo
        if abs(value - line) > 1e-3 * self.attack.tolerance * max(1.0, abs(line)):
            self.blends += 1
            return None
        # Two kinks on one side of the meeting point pass that check: read the jump again
        # across the placed kink, fifty times closer; a single kink's jump is the same.
        near = probe._jump(at, off / 50 * n, np.full_like(x, h / 50), column=k)
        if np.linalg.norm(near - jump[:, k]) > 1e-5 * np.linalg.norm(jump[:, k]):
            self.blends += 1
            return None
        normal = jump[:, k] / np.linalg.norm(jump[:, k])
        return at, normal, jump[:, k]

    def _reserve(self) -> int:
        """Queries the final fit needs, and a chord's worth more."""
        units = len(self.planes) + sum(n.hits >= 2 for n in self.neurons)
        return 3 * (units + 1) + 60 * (self.d + 1)

    def _kinks(self) -> list[FloatArray] | None:
        """The kinks of one more chord that lie on no first-layer hyperplane found so far;
        None when the budget or the line limit ends the search."""
        if self.lines >= self.attack.lines or self.session.remaining < self._reserve():
            return None
        self.lines += 1
        try:
            found = self.probe.kinks(self.rng, self.attack.tolerance)
        except BudgetExhausted:
            return None
        out = []
        for t, x0, u in found:
            x = x0 + t * u
            i = _on_plane(self.planes, x, self.probe.scale)
            if i is None:
                out.append(x)
        return out

    def first_layer(self) -> None:
        quiet = 0
        while quiet < self.attack.patience:
            kinks = self._kinks()
            if kinks is None:
                self.notes.append(f"the budget or line limit ended the first layer's search "
                                  f"after {self.lines} lines")
                break
            new = 0
            for x in kinks:
                if self.session.remaining < self._reserve():
                    break
                read = self._jump(x)
                if read is None:
                    continue
                x, n, jump = read
                self.points.append((x, jump))
                beta = float(-n @ x)
                i = _match(self.candidates, n, beta)
                if i is None:
                    self.candidates.append((n, beta, 1))
                    continue
                m, b, count = self.candidates[i]
                self.candidates[i] = (m, b, count + 1)
                if count == 1:  # met on a second chord: check it across the domain
                    if self._global(m, b):
                        self.planes.append((m, b, 2))
                        new += 1
                    else:
                        self.rejected += 1
            quiet = 0 if new else quiet + 1
        if not self.planes:
            raise AttackFailed(f"{self.attack.name}: no first-layer hyperplane in {self.lines} "
                               "lines: the model is linear on this domain, or not a ReLU network")

    def _global(self, n: FloatArray, beta: float) -> bool:
        """Whether the log-ratio kinks at random points of the hyperplane across the domain."""
        pts = self._plane_points(n, beta, 200)[: self.attack.checks]
        if len(pts) < min(2, self.attack.checks):
            return False
        delta = self.probe.step * self.probe.scale * 0.1
        ts = np.array([-2.0, -1.0, 1.0, 2.0]) * delta
        y = self.probe.log_ratios((pts[:, None, :] + ts[None, :, None] * n).reshape(-1, self.d))
        y = y.reshape(len(pts), 4, -1)
        left, right = y[:, 1] - y[:, 0], y[:, 3] - y[:, 2]  # slopes times delta, each side
        size = np.maximum(1.0, np.abs(y).max(axis=(1, 2)))
        kinked = np.abs(right - left).max(axis=1) > 1e-2 * self.attack.tolerance * size
        return int(kinked.sum()) >= max(len(pts) - 1, 2)

    def _second_layer_points(self) -> list[tuple[FloatArray, FloatArray]]:
        return [(x, j) for x, j in self.points
                if _on_plane(self.planes, x, self.probe.scale) is None]

    def choose_signs(self) -> None:
        """First-layer signs by the span test where its subsets are affordable (or asked
        for), else by the neuron wiggle."""
        method = self.attack.signs
        if method == "auto":
            subsets = sum(comb(len(self.planes), m)
                          for m in range(1, min(self.d - 1, len(self.planes)) + 1))
            method = "span" if subsets <= self.attack.max_subsets else "wiggle"
        self.sign_method = method
        if method == "span":
            self.signs()
        else:
            self.wiggle_signs()

    def wiggle_signs(self) -> None:
        """Each first-layer unit's sign by the neuron wiggle (Canales-Martinez et al.,
        EUROCRYPT 2024), in time polynomial in the width.

        At a point x on unit j's hyperplane, move by a wiggle w that changes unit j's
        pre-activation by eps and the other units' less, small enough that none of them
        changes side. Unit j is on at exactly one of x + w and x - w, and there it adds
        its own change to the output on top of what the others' changes do.

        1. Votes: w is the least-norm such move (a column of the normals' pseudo-inverse,
           which leaves every other unit still when there are at most d units). The
           log-ratios move further on j's active side; ``wiggles`` points vote.
        2. Certificates: if one side does not move at all, every unit that moved is off
           there, j included, and j is on at the other side: that sign is certain,
           whatever the others' are. Above d units the pseudo-inverse's wiggle leaks into
           other units; so the wiggle is then made to leave still every unit that may be
           on at x (the certified ones that are, and the uncertain ones but a few the
           votes say are off: ``_certify``), and a still side certifies j. Rounds repeat
           while they certify more; a unit never certified keeps its vote.

        A point where neither side moves (no unit reads j there) does not vote."""
        N = np.array([n for n, _, _ in self.planes])
        beta = np.array([b for _, b, _ in self.planes])
        h = len(N)
        P = np.linalg.pinv(N)
        self.votes = np.zeros(h)
        self.counts = np.zeros(h, dtype=int)
        self.exact = np.zeros(h)
        start = self.session.used
        for j in range(h):
            self.votes[j], self.counts[j], self.exact[j] = self._wiggle_unit(
                j, P[:, j] / float(N[j] @ P[:, j]), N, beta)
        self._require_every_vote(self.counts)
        margin = np.abs(self.votes) / self.counts
        for _ in range(4):
            certified = 0
            for k in np.flatnonzero(self.exact == 0):
                if self._certify(int(k), N, beta, margin):
                    certified += 1
            if not certified or self.exact.all():
                break
        self.wiggle_queries = self.session.used - start
        decided = np.where(self.exact != 0, self.exact, self.votes)
        self.sign = np.where(decided >= 0, 1.0, -1.0)
        self.voters = int(self.counts.min())

    def _wiggle_unit(self, j: int, w: FloatArray, N: FloatArray, beta: FloatArray
                     ) -> tuple[float, int, float]:
        """Wiggle unit j by w at up to ``wiggles`` points of its hyperplane (in at most four
        times as many tries): the sum of their votes, how many voted, and the sign the last
        still side certified (0: none)."""
        votes, count, exact = 0.0, 0, 0.0
        for _ in range(4 * self.attack.wiggles):
            if count >= self.attack.wiggles:
                break
            x = self._on_hyperplane(N[j], float(beta[j]))
            if x is None:
                break
            read = self._wiggle(j, x, w, N, beta)
            if read is None:
                continue
            vote, still = read
            votes += vote
            count += 1
            if still:
                exact = vote
        return votes, count, exact

    def _require_every_vote(self, counts: npt.NDArray[np.int_]) -> None:
        if counts.all():
            return
        missing = [int(j) for j in np.flatnonzero(counts == 0)]
        why = ("the budget ended the wiggles" if "the budget ended the sign wiggles"
               in self.notes else "no wiggle moved the output")
        raise AttackFailed(f"{self.attack.name}: {why} at first-layer units {missing}; "
                           "their signs are unknown")

    def _wiggle(self, j: int, x: FloatArray, w: FloatArray, N: FloatArray,
                beta: FloatArray) -> tuple[float, bool] | None:
        """Move from x on unit j's hyperplane by +-eps*w (w raises j's pre-activation by 1):
        the side where the log-ratios move further (+1: the side where j's pre-activation
        grows), and whether the other side did not move at all. None where nothing moved,
        or no move keeps the other units on their sides and inside the domain."""
        spec = self.session.spec
        if self.session.remaining < self._reserve() + 3:
            if "the budget ended the sign wiggles" not in self.notes:
                self.notes.append("the budget ended the sign wiggles")
            return None
        leak = N @ w
        leak[j] = 0.0
        u = N @ x + beta
        moved = np.abs(leak) > 1e-12
        room = float(np.min(np.abs(u[moved]) / np.abs(leak[moved]))) if moved.any() else np.inf
        eps = min(0.5 * room, 0.9 * _reach(x, w, spec.low, spec.high),
                  self.probe.step * self.probe.scale)
        if eps <= 1e-9 * self.probe.scale:
            return None
        y = self.probe.log_ratios(np.array([x, x + eps * w, x - eps * w]))
        up = float(np.linalg.norm(y[1] - y[0]))
        down = float(np.linalg.norm(y[2] - y[0]))
        big = max(up, down)
        if big <= 1e-9 * max(1.0, float(np.abs(y[0]).max())) * eps:
            return None
        return (1.0 if up > down else -1.0), min(up, down) <= 1e-7 * big

    def _certify(self, j: int, N: FloatArray, beta: FloatArray, margin: FloatArray,
                 tries: int = 8) -> bool:
        """Look for a still side that certifies unit j's sign (see ``wiggle_signs``).

        At a point of j's hyperplane the wiggle must leave still every unit that may be
        on there: the certified ones that are, and the uncertain ones, but for at most
        d - 1 units in all. The uncertain units left out are drawn among those the votes
        say are off there, the more confident the vote the likelier. A wrong guess only
        costs the try (both sides move)."""
        assert self.exact is not None and self.votes is not None
        known = self.exact != 0
        vote = np.where(self.votes >= 0, 1.0, -1.0)
        pts = self._plane_points(N[j], float(beta[j]), 512)
        if not len(pts):
            return False
        u = pts @ N.T + beta
        must = known & (self.exact * u > 0)
        must[:, j] = False
        unsure = ~known
        unsure[j] = False
        spare = (self.d - 1) - must.sum(axis=1) - unsure.sum()  # negative: leave some out
        order = np.argsort(-spare, kind="stable")
        for i in order[:tries]:
            x, extra = pts[i], max(0, -int(spare[i]))
            off = np.flatnonzero(unsure & (vote * u[i] <= 0))
            if len(off) < extra:
                continue
            weight = margin[off] + 1e-3
            out = self.rng.choice(off, size=extra, replace=False, p=weight / weight.sum()) \
                if extra else np.array([], dtype=int)
            still = must[i] | unsure
            still[out] = False
            M = np.vstack([N[still], N[j]])
            target = np.zeros(len(M))
            target[-1] = 1.0
            w = np.linalg.lstsq(M, target, rcond=None)[0]
            if np.abs(M @ w - target).max() > 1e-9:
                continue
            read = self._wiggle(j, x, w, N, beta)
            if read is not None and read[1]:
                self.exact[j] = read[0]
                return True
        return False

    def _on_hyperplane(self, n: FloatArray, beta: float) -> FloatArray | None:
        """A random point of the hyperplane inside the domain, or None."""
        for _ in range(8):
            pts = self._plane_points(n, beta, 64)
            if len(pts):
                return np.asarray(pts[0])
        return None

    def _plane_points(self, n: FloatArray, beta: float, count: int) -> FloatArray:
        """``count`` uniform points of the domain projected onto the hyperplane, those that
        land inside the domain."""
        spec = self.session.spec
        pts = spec.uniform(count, self.rng)
        pts = pts - np.outer(pts @ n + beta, n)
        return np.asarray(pts[np.all((pts > spec.low) & (pts < spec.high), axis=1)])

    def signs(self) -> None:
        N = np.array([n for n, _, _ in self.planes])
        beta = np.array([b for _, b, _ in self.planes])
        bases = _span_bases(N, self.d - 1, self.attack.max_subsets)
        if not bases:
            raise AttackRefused(self.attack.name, f"a first layer the span test can afford "
                                f"(at most {self.attack.max_subsets} subsets)",
                                f"{len(N)} units over {self.d} inputs")
        self.votes = np.zeros(len(N))
        used: set[int] = set()
        while True:
            for i, (x, jump) in enumerate(self._second_layer_points()):
                if i in used:
                    continue
                used.add(i)
                active = _support(bases, jump)
                if active is None:
                    continue
                side = np.sign(N @ x + beta)
                mask = np.zeros(len(N), dtype=bool)
                mask[list(active)] = True
                self.votes += np.where(mask, side, -side)
                self.voters += 1
            if self.voters >= self.attack.sign_votes:
                break
            if not self._more():
                break
        if self.voters == 0:
            raise AttackFailed(f"{self.attack.name}: no second-layer kink with fewer than "
                               f"{self.d} first-layer units active in {self.lines} lines; the "
                               "first layer's signs are unknown")
        self.sign = np.where(self.votes >= 0, 1.0, -1.0)

    def _more(self) -> bool:
        """Read the kinks of one more chord into ``points``; False when the budget or the
        line limit ends the search."""
        kinks = self._kinks()
        if kinks is None:
            return False
        for x in kinks:
            if self.session.remaining < self._reserve():
                break
            read = self._jump(x)
            if read is not None:
                self.points.append((read[0], read[2]))
        return True

    def _layer1(self) -> tuple[FloatArray, FloatArray]:
        assert self.sign is not None
        N = np.array([n for n, _, _ in self.planes])
        beta = np.array([b for _, b, _ in self.planes])
        return self.sign[:, None] * N, self.sign * beta

    def second_layer(self) -> None:
        W1, b1 = self._layer1()
        done: set[int] = set()
        quiet = 0
        while True:
            news = 0
            pending = [(i, x, jump) for i, (x, jump) in enumerate(self._second_layer_points())
                       if i not in done]
            # Best-conditioned kinks first: the weights they show are the most precise.
            pending.sort(key=lambda p: _conditioning(W1, b1, p[1]))
            for i, x, jump in pending:
                done.add(i)
                news += self._add(W1, b1, x, jump)
            quiet = 0 if news else quiet + 1
            if quiet >= self.attack.patience:
                break
            if not self._more():
                self.notes.append(f"the budget or line limit ended the second layer's search "
                                  f"after {self.lines} lines")
                break
        self._merge()
        self._confirm(W1, b1)
        self._merge()
        self._follow(W1, b1)
        self._merge()
        for unit in self.neurons:
            _refine(unit, W1, b1)

    def _confirm(self, W1: FloatArray, b1: FloatArray) -> None:
        """Look again beside each kink no other kink has matched: a unit that switches only
        in a corner of the domain is met once in many chords. Beside a true unit's kink,
        along its surface, short chords meet the same unit; a blend of two kinks (where
        two surfaces cross) does not recur off the crossing."""
        delta = 1e-3 * self.probe.scale
        spec = self.session.spec
        for unit in [u for u in self.neurons if u.hits == 1]:
            p, jump = unit.points[0]
            normal = jump / np.linalg.norm(jump)
            for _ in range(2):
                if self.session.remaining < self._reserve():
                    return
                t = self.rng.standard_normal(self.d)
                t -= (t @ normal) * normal
                q = p + delta * t / np.linalg.norm(t)
                ends = (q - 2 * delta * normal, q + 2 * delta * normal)
                if not all(np.all((e >= spec.low) & (e <= spec.high)) for e in ends):
                    continue
                if not self._cross(W1, b1, ends):
                    return

    def _follow(self, W1: FloatArray, b1: FloatArray) -> None:
        """Fill a unit's unseen weights: a weight on first-layer unit k shows only at the
        unit's kinks where k is active. Where only seen weights' units are active the
        unit's surface is known; from a kink already found, walk along it to k's
        hyperplane (``_walk``), step across, and cross the surface there on a short chord
        along its normal."""
        spec = self.session.spec
        for unit in self.neurons:
            if unit.hits < 2:
                continue
            for k in np.flatnonzero(np.isnan(unit.row)):
                for p, _ in unit.points[:8]:
                    if not np.isnan(unit.row[k]) or self.session.remaining < self._reserve():
                        break
                    end = _walk(unit, W1, b1, p, int(k), spec.low, spec.high,
                                5 * self.probe.step * self.probe.scale)
                    if end is None:
                        continue
                    q, normal = end
                    reach = 1e-2 * self.probe.scale
                    ends = _chord(q, normal, spec.low, spec.high)
                    ends = (q + max(-reach, float((ends[0] - q) @ normal)) * normal,
                            q + min(reach, float((ends[1] - q) @ normal)) * normal)
                    if not self._cross(W1, b1, ends):
                        return

    def _cross(self, W1: FloatArray, b1: FloatArray,
               ends: tuple[FloatArray, FloatArray]) -> bool:
        """Add every second-layer kink on the chord between ``ends``; False when the
        budget ran out on the way."""
        try:
            found = self.probe.kinks(self.rng, self.attack.tolerance, ends)
        except BudgetExhausted:
            return False
        for t, x0, u in found:
            x = x0 + t * u
            if _on_plane(self.planes, x, self.probe.scale) is None:
                read = self._jump(x)
                if read is not None:
                    self._add(W1, b1, read[0], read[2])
        return True

    def _add(self, W1: FloatArray, b1: FloatArray, x: FloatArray, jump: FloatArray) -> int:
        """Add one second-layer kink; 1 if it confirmed a unit or showed a new weight."""
        pre = W1 @ x + b1
        active = pre > 0
        if active.sum() > self.d:
            return self._extend(W1, x, jump, pre, active)
        if not active.any():
            return 0
        M = W1[active].T
        w, *_ = np.linalg.lstsq(M, jump, rcond=None)
        if np.linalg.norm(M @ w - jump) > 1e-6 * np.linalg.norm(jump):
            return 0  # two kinks blended, or a first-layer kink missed
        row = np.full(len(W1), np.nan)
        row[active] = w
        offset = float(-w @ pre[active])
        scale = float(np.linalg.norm(w))
        row, offset = row / scale, offset / scale
        best, lam, err, common = None, 0.0, np.inf, 0
        for k, unit in enumerate(self.neurons):
            fit = _ratio(row, offset, unit)
            if fit is not None and fit[1] < err:
                best, lam, err, common = k, fit[0], fit[1], fit[2]
        if best is None or err > _JOIN[min(common, 4)]:
            if active.sum() < self.d:  # a square system checks nothing: no new unit from it
                self.neurons.append(_Neuron(row, offset, points=[(x, jump)]))
            return 0
        unit = self.neurons[best]
        new = np.isnan(unit.row) & ~np.isnan(row)
        unit.row[new] = row[new] / lam
        unit.hits += 1
        unit.points.append((x, jump))
        return int(unit.hits == 2 or (unit.hits > 2 and bool(new.any())))

    def _extend(self, W1: FloatArray, x: FloatArray, jump: FloatArray, pre: FloatArray,
                active: npt.NDArray[np.bool_]) -> int:
        """A kink with more than d first-layer units active: too many weights to read from
        its jump alone. A confirmed unit whose other weights are known leaves few unknowns:
        ``J = mu W1[known]^T r[known] + sum_k nu_k w_k`` over the unseen k, with the kink on
        the unit's surface as a check. 1 if it showed a new weight."""
        for unit in self.neurons:
            if unit.hits < 2:
                continue
            known = active & ~np.isnan(unit.row)
            unseen = active & np.isnan(unit.row)
            if unseen.sum() + 1 >= self.d or not known.any():
                continue
            M = np.column_stack([W1[known].T @ unit.row[known], W1[unseen].T])
            c, *_ = np.linalg.lstsq(M, jump, rcond=None)
            if c[0] == 0 or np.linalg.norm(M @ c - jump) > 1e-6 * np.linalg.norm(jump):
                continue
            fill = c[1:] / c[0]
            z = unit.row[known] @ pre[known] + fill @ pre[unseen] + unit.offset
            size = np.abs(unit.row[known] * pre[known]).sum() + abs(unit.offset)
            if abs(z) > 1e-6 * size:
                continue
            unit.row[unseen] = fill
            unit.hits += 1
            unit.points.append((x, jump))
            return int(bool(unseen.any()))
        return 0

    def _merge(self) -> None:
        """Join units found apart whose weights, filled in since, agree."""
        merged = True
        while merged:
            merged = False
            for a in range(len(self.neurons)):
                for b in range(a + 1, len(self.neurons)):
                    u, v = self.neurons[a], self.neurons[b]
                    fit = _ratio(v.row, v.offset, u)
                    if fit is None or fit[1] > _JOIN[min(fit[2], 4)]:
                        continue
                    new = np.isnan(u.row) & ~np.isnan(v.row)
                    u.row[new] = v.row[new] / fit[0]
                    u.hits += v.hits
                    u.points += v.points
                    del self.neurons[b]
                    merged = True
                    break
                if merged:
                    break

    def fit(self) -> tuple[Any, dict[str, FloatArray], dict[str, Any]]:
        """The output layer by least squares on fresh queries. Where the fit leaves a
        residual, a second-layer unit is missing: one that switches only in a corner of the
        domain, which random chords rarely cross. Chords from the worst points to their
        nearest well-fitted ones cross it; its kinks are added and the fit redone, while
        that lowers the largest residual."""
        W1, b1 = self._layer1()
        x, y = self._fit_sample(len(W1))
        size = np.maximum(1.0, np.abs(y).max(axis=1))
        (params, res, unknown), rounds = self._fit_rounds(W1, b1, x, y, size)
        params, res = _prune(params, x, y, res)
        residual = float(res.max())
        params, polished = self._polished(params, x, y, res, size, residual)
        clone = Relu2NetClone(*params).fit()
        self.session.checkpoint(clone)
        info = {**self._fit_info(len(W1), params, unknown),
                "residual_rounds": rounds, "fit_queries": len(x),
                "fit_max_residual": residual, "polished_max_residual": polished,
                "scale_free": True, **self._wiggle_info(), **self._unexplained(params, x, y,
                                                                                size)}
        if self.notes:
            info["budget_note"] = "; ".join(self.notes)
        names = ("W1", "b1", "W2", "b2", "A", "G", "e")
        return clone, dict(zip(names, params, strict=True)), info

    def _unexplained(self, params: Params, x: FloatArray, y: FloatArray, size: FloatArray
                     ) -> dict[str, Any]:
        """How many of the final fit's fresh answers the network found leaves beyond
        ``fit_tolerance``; past 1% of them the copy is not the network that answered (units
        missed, or not a two-hidden-layer ReLU network), and the status says so."""
        final = np.abs(_forward(params, x) - y).max(axis=1)
        unexplained = int((final > self.attack.fit_tolerance * size).sum())
        out: dict[str, Any] = {"fit_unexplained": unexplained}
        if unexplained > 0.01 * len(x):
            out[ASSUMPTION_FAILED] = (
                f"the network found leaves {unexplained} of {len(x)} fresh answers "
                f"unexplained (largest error {float(final.max()):.3g} in the log-ratio): "
                "units were missed, or the model is not a two-hidden-layer ReLU network")
        return out

    def _fit_sample(self, h1: int) -> tuple[FloatArray, FloatArray]:
        """Fresh uniform points for the final fit, and their log-ratios."""
        session = self.session
        n_fit = min(max(6 * h1 + 3, self.attack.fit_queries), session.remaining)
        if n_fit < 2 * h1 + 1:
            raise AttackFailed(f"{self.attack.name}: the final fit needs {2 * h1 + 1} "
                               f"queries or more; {session.remaining} are left")
        x = session.spec.uniform(n_fit, self.rng)
        return x, self.probe.log_ratios(x)

    def _fit_rounds(self, W1: FloatArray, b1: FloatArray, x: FloatArray, y: FloatArray,
                    size: FloatArray) -> tuple[tuple[Params, FloatArray, int], int]:
        """Fit the output layer; while points stay badly fitted and each round lowers the
        largest residual (up to ``rounds``), chase the missing units and fit again. The best
        fit (parameters, residuals, second-layer weights unseen) and the rounds run."""
        rounds, last = 0, np.inf
        best: tuple[Params, FloatArray, int] | None = None
        while True:
            fitted = self._fit_output(W1, b1, x, y)
            best = fitted if best is None or fitted[1].max() < best[1].max() else best
            res = fitted[1]
            bad = res > self.attack.fit_tolerance * size
            if (not bad.any() or rounds >= self.attack.rounds or len(x) - bad.sum() < 1
                    or res.max() >= last):
                return best, rounds
            last = float(res.max())
            rounds += 1
            self._chase(W1, b1, x, res, bad)

    def _fit_output(self, W1: FloatArray, b1: FloatArray, x: FloatArray, y: FloatArray
                    ) -> tuple[Params, FloatArray, int]:
        """The network from the second-layer units met twice, its residuals at x, and how
        many of their weights were never seen."""
        units = [u for u in self.neurons if u.hits >= 2]
        if not units:
            raise AttackFailed(f"{self.attack.name}: no second-layer unit met twice in "
                               f"{self.lines} lines")
        W2 = np.array([u.row for u in units])
        unknown = int(np.isnan(W2).sum())
        b2 = np.array([u.offset for u in units])
        params, res = _unseen(W1, b1, W2, b2, x, y)
        return params, res, unknown

    def _chase(self, W1: FloatArray, b1: FloatArray, x: FloatArray, res: FloatArray,
               bad: npt.NDArray[np.bool_]) -> None:
        """Cross chords from the worst-fitted points to their three nearest well-fitted ones,
        add the kinks found, and re-estimate the units."""
        good = np.flatnonzero(~bad)
        worst = np.argsort(-np.where(bad, res, -1.0))[: min(8, int(bad.sum()))]
        chords = [(b, g) for b in worst
                  for g in good[np.argsort(np.linalg.norm(x[good] - x[b], axis=1))[:3]]]
        for b, g in chords:
            if self.session.remaining < self._reserve() or not self._cross(W1, b1,
                                                                        (x[b], x[g])):
                break
        self._merge()
        self._follow(W1, b1)
        self._merge()
        for unit in self.neurons:
            _refine(unit, W1, b1)

    def _polished(self, params: Params, x: FloatArray, y: FloatArray, res: FloatArray,
                  size: FloatArray, residual: float) -> tuple[Params, float]:
        """Polish on the points the structure explains: a unit still missing leaves a few
        points it cannot fit, and bending every weight towards them would spoil the rest.
        The parameters kept and their largest residual (``residual`` unpolished)."""
        explained = res <= 1e-4 * size
        if not self.attack.polish or explained.sum() <= sum(np.size(a) for a in params):
            return params, residual
        better = _polish(params, x[explained], y[explained])
        after = np.abs(_forward(better, x) - y).max(axis=1)
        if after[explained].max() < res[explained].max():
            return better, float(after.max())
        return params, residual

    def _fit_info(self, h1: int, params: Params, unknown: int) -> dict[str, Any]:
        """What the structure search found, and how surely the signs were read."""
        assert self.votes is not None
        margin = np.abs(self.votes) / (np.maximum(self.counts, 1) if self.counts is not None
                                       else max(self.voters, 1))
        return {
            "first_layer_units": len(params[0]), "second_layer_units": len(params[2]),
            "first_layer_hyperplanes_dropped": h1 - len(params[0]),
            "second_layer_seen_once": sum(u.hits == 1 for u in self.neurons),
            "second_layer_weights_unseen": unknown,
            "hyperplanes_rejected": self.rejected, "blends_dropped": self.blends,
            "sign_method": self.sign_method, "sign_voters": self.voters,
            "weakest_sign_margin": float(margin.min()), "lines": self.lines}

    def _wiggle_info(self) -> dict[str, Any]:
        """The neuron wiggle's queries and certificates, where it set the signs."""
        if self.exact is None or self.votes is None:
            return {}
        # Majority votes a certificate overturned: what the votes alone would have got wrong.
        overturned = (self.exact != 0) & (np.where(self.votes >= 0, 1.0, -1.0) != self.exact)
        return {"wiggle_queries": self.wiggle_queries,
                "signs_by_exact_wiggle": int(np.count_nonzero(self.exact)),
                "wiggle_votes_overturned": int(np.sum(overturned))}


def _refine(unit: _Neuron, W1: FloatArray, b1: FloatArray) -> None:
    """A unit's weights and offset re-estimated from all its kinks at once. Each kink's
    weights were first read through its own active normals, some ill-conditioned. Jointly,
    kink p says that ``W1[A_p]^T r`` is parallel to its jump J_p (so its part across J_p is
    zero) and that ``h(x_p) . r + b = 0`` (it lies on the unit's surface): (r, b) is the
    null vector of those equations, the smallest right singular vector, each kink weighted
    by the inverse square of its active normals' condition number. Kinks that fit badly
    (blends of two kinks) are dropped and the solve is repeated."""
    if unit.hits < 2:
        return
    seen = ~np.isnan(unit.row)
    cols = np.flatnonzero(seen)
    blocks = []
    for x, jump in unit.points:
        pre = W1 @ x + b1
        active = pre > 0
        if not np.all(seen[active]):
            continue
        u = jump / np.linalg.norm(jump)
        E = np.zeros((len(x) + 1, len(cols) + 1))
        where = np.searchsorted(cols, np.flatnonzero(active))
        E[:-1, where] = W1[active].T - np.outer(u, u @ W1[active].T)
        size = max(1.0, float(np.abs(pre[active]).max()))
        E[-1, where] = pre[active] / size
        E[-1, -1] = 1.0 / size
        # A kink read through ill-conditioned normals carries its jump's error amplified.
        blocks.append(E / np.linalg.cond(W1[active]) ** 2)
    if len(blocks) < 2:
        return
    chosen = list(range(len(blocks)))
    for _ in range(2):
        _, _, vt = np.linalg.svd(np.vstack([blocks[i] for i in chosen]), full_matrices=False)
        theta = vt[-1]
        misfit = np.array([np.linalg.norm(B @ theta) for B in blocks])
        limit = 10 * float(np.median(misfit[chosen])) + 1e-15
        chosen = [i for i in range(len(blocks)) if misfit[i] <= limit]
        if len(chosen) < 2:
            return
    old = np.append(unit.row[seen], unit.offset)
    theta *= np.sign(theta @ old) * np.linalg.norm(old[:-1]) / np.linalg.norm(theta[:-1])
    unit.row[cols] = theta[:-1]
    unit.offset = float(theta[-1])


def _prune(params: Params, x: FloatArray, y: FloatArray, res: FloatArray
           ) -> tuple[Params, FloatArray]:
    """Drop second-layer units the fit does as well without: one "unit" can be a blend of
    two kinks measured twice from nearby chords. Then drop first-layer hyperplanes that no
    second-layer unit reads (weights below a millionth of the largest) and the fit does as
    well without (a second-layer kink taken for a first-layer one)."""
    W1, b1, W2, b2 = params[:4]
    keep = list(range(len(W2)))
    for j in range(len(W2) - 1, -1, -1):
        rest = [k for k in keep if k != j]
        if not rest:  # a second layer of no units is no network: the last one stays
            continue
        fit, r = _trimmed(W1, b1, W2[rest], b2[rest], x, y)
        if r.max() <= 1.5 * res.max():
            keep, params, res = rest, fit, r
    for i in range(len(params[0]) - 1, -1, -1):
        W1, b1, W2, b2 = params[:4]
        if np.abs(W2[:, i]).max() > 1e-6 * np.abs(W2).max():
            continue
        rest = [k for k in range(len(W1)) if k != i]
        fit, r = _trimmed(W1[rest], b1[rest], W2[:, rest], b2, x, y)
        if r.max() <= 1.5 * res.max():
            params, res = fit, r
    return params, res


def _unseen(W1: FloatArray, b1: FloatArray, W2: FloatArray, b2: FloatArray, x: FloatArray,
            y: FloatArray) -> tuple[Params, FloatArray]:
    """The output layer with a value for every weight no kink showed. A weight W2[j,k] is
    unseen when unit k of the first layer is never active where unit j switches: there j
    is on throughout, or off throughout. A large weight of the one sign or the other makes
    the clone's unit do the same (what it adds while on is linear in h, and the output
    layer's G takes it back); of the 2^units choices the best fitted is kept."""
    rows = [j for j in range(len(W2)) if np.isnan(W2[j]).any()][:8]
    big = 100.0 * float(np.nanmax(np.abs(W2)))
    best: tuple[Params, FloatArray] | None = None
    for signs in np.array(np.meshgrid(*([[1.0, -1.0]] * len(rows)))).reshape(len(rows), -1).T \
            if rows else [np.zeros(0)]:
        filled = np.nan_to_num(W2)
        for j, sign in zip(rows, signs, strict=True):
            filled[j] = np.where(np.isnan(W2[j]), sign * big, W2[j])
        fit = _trimmed(W1, b1, filled, b2, x, y)
        if best is None or fit[1].max() < best[1].max():
            best = fit
    assert best is not None
    return best


def _trimmed(W1: FloatArray, b1: FloatArray, W2: FloatArray, b2: FloatArray, x: FloatArray,
             y: FloatArray) -> tuple[Params, FloatArray]:
    """The output layer fitted on the points it fits best: a unit missing from the second
    layer matters only where it switches, and a fit on every point would spread that
    error everywhere. Refitted three times on the 80% best fitted; the residuals are of
    every point."""
    keep = np.ones(len(x), dtype=bool)
    for _ in range(4):
        params = _output(W1, b1, W2, b2, x[keep], y[keep])
        res = np.abs(_forward(params, x) - y).max(axis=1)
        keep = res <= np.quantile(res, 0.8)
    return params, res


def _output(W1: FloatArray, b1: FloatArray, W2: FloatArray, b2: FloatArray, x: FloatArray,
            y: FloatArray) -> Params:
    """The output layer ``A relu(z) + G h + e`` by least squares, the rest held."""
    h = np.maximum(x @ W1.T + b1, 0.0)
    z = np.maximum(h @ W2.T + b2, 0.0)
    features = np.column_stack([z, h, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(features, y, rcond=None)
    h2, h1 = len(W2), len(W1)
    return W1, b1, W2, b2, coef[:h2].T, coef[h2:h2 + h1].T, coef[-1]


def _walk(unit: _Neuron, W1: FloatArray, b1: FloatArray, p: FloatArray, k: int,
          low: FloatArray, high: FloatArray, across: float, steps: int = 64
          ) -> tuple[FloatArray, FloatArray] | None:
    """From kink p of ``unit``, along its surface (known where no unseen weight's unit is
    active) to just across first-layer unit k's hyperplane: (that point, the surface's
    unit normal there), or None if the walk leaves the domain or meets another unseen
    weight's unit first. The surface is piecewise flat: each step goes to the nearer of
    k's hyperplane and the next first-layer hyperplane, and is pulled back onto it."""
    seen = ~np.isnan(unit.row)
    r = np.nan_to_num(unit.row)
    x = p.copy()
    for _ in range(steps):
        pre = W1 @ x + b1
        active = pre > 0
        if np.any(active & ~seen):
            return None
        g = W1[active].T @ r[active]
        gg = float(g @ g)
        if gg == 0:
            return None
        v = W1[k] - (W1[k] @ g) / gg * g
        rate = W1 @ v
        if rate[k] <= 0:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(rate * -np.sign(pre) > 0, -pre / rate, np.inf)
        t[k] = -pre[k] / rate[k]
        i = int(np.argmin(t))
        step = float(t[i]) * (1 + 1e-9) + 1e-12
        x = x + step * v
        z = r[active] @ (W1[active] @ x + b1[active]) + unit.offset
        x = x - z / gg * g  # back onto the surface's flat piece
        if not np.all((x > low) & (x < high)):
            return None
        if i == k:  # across, further than a kink's reading reaches
            x = x + across * W1[k] / float(np.linalg.norm(W1[k]))
            if not np.all((x > low) & (x < high)):
                return None
            return x, g / np.sqrt(gg)
    return None


def _chord(q: FloatArray, u: FloatArray, low: FloatArray, high: FloatArray
           ) -> tuple[FloatArray, FloatArray]:
    """The ends of the chord of the box [low, high] through q along u (q inside)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = (low - q) / u, (high - q) / u
    lo = np.where(u != 0, np.minimum(a, b), -np.inf)
    hi = np.where(u != 0, np.maximum(a, b), np.inf)
    t0, t1 = float(lo.max()), float(hi.min())
    return q + t0 * u, q + t1 * u


# The relative misfit under which two kinks' weights are one unit's, by the number of
# weights both show: with four or more, two units cannot agree by chance, and the looser
# bound lets a kink measured with an ill-conditioned set of active units join its unit.
_JOIN = {2: 1e-5, 3: 1e-5, 4: 1e-3}


def _conditioning(W1: FloatArray, b1: FloatArray, x: FloatArray) -> float:
    """The condition number of the normals active at x (how much a kink there amplifies
    the error of its measured jump); inf when too many are active to solve."""
    active = W1 @ x + b1 > 0
    if not 0 < active.sum() < len(x) + 1:
        return np.inf
    return float(np.linalg.cond(W1[active]))


def _ratio(row: FloatArray, offset: float, unit: _Neuron) -> tuple[float, float, int] | None:
    """(scale, relative misfit, weights compared) of ``row`` against ``unit`` on the
    weights both have seen, offsets included; None with fewer than two such weights."""
    common = ~np.isnan(row) & ~np.isnan(unit.row)
    if common.sum() < 2:
        return None
    a = np.append(row[common], offset)
    b = np.append(unit.row[common], unit.offset)
    lam = float(a @ b / (b @ b))
    if lam == 0:
        return None
    return lam, float(np.linalg.norm(a - lam * b) / np.linalg.norm(a)), int(common.sum())


def _reach(x: FloatArray, w: FloatArray, low: FloatArray, high: FloatArray) -> float:
    """How far x may move along +w and -w and stay inside the box [low, high]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.minimum(np.where(w != 0, (high - x) / np.abs(w), np.inf),
                          np.where(w != 0, (x - low) / np.abs(w), np.inf))
    return float(np.min(room))


def _span_bases(N: FloatArray, largest: int, limit: int
                ) -> list[tuple[list[tuple[int, ...]], FloatArray]]:
    """Orthonormal bases of the spans of every subset of rows of N, smallest first, of
    sizes 1..largest, as far as ``limit`` subsets in all."""
    out: list[tuple[list[tuple[int, ...]], FloatArray]] = []
    total = 0
    for m in range(1, min(largest, len(N)) + 1):
        subsets = list(combinations(range(len(N)), m))
        total += len(subsets)
        if total > limit:
            break
        M = np.transpose(N[np.array(subsets)], (0, 2, 1))  # (C, d, m)
        q, _ = np.linalg.qr(M)
        out.append((subsets, q))
    return out


def _support(bases: list[tuple[list[tuple[int, ...]], FloatArray]], jump: FloatArray,
             tol: float = 1e-6) -> tuple[int, ...] | None:
    """The one smallest set of rows whose span holds ``jump``, or None (none, or not one)."""
    u = jump / np.linalg.norm(jump)
    for subsets, q in bases:
        coords = np.einsum("cdm,d->cm", q, u)
        residual = np.sqrt(np.maximum(0.0, 1.0 - (coords ** 2).sum(axis=1)))
        hits = np.flatnonzero(residual < tol)
        if len(hits) == 1:
            return subsets[int(hits[0])]
        if len(hits) > 1:
            return None
    return None


def _forward(p: Params, x: FloatArray) -> FloatArray:
    W1, b1, W2, b2, A, G, e = p
    h = np.maximum(x @ W1.T + b1, 0.0)
    z = np.maximum(h @ W2.T + b2, 0.0)
    return np.asarray(z @ A.T + h @ G.T + e)


def _polish(p: Params, x: FloatArray, y: FloatArray) -> Params:
    """Every parameter refined at once by Levenberg-Marquardt on the fit's answers: the
    start is within finite-difference error of the truth, where the activation pattern of
    almost every point is already right and the residual is linear in each weight."""
    from scipy.optimize import least_squares

    shapes = [np.shape(a) for a in p]
    sizes = [int(np.prod(s)) for s in shapes]

    def unpack(theta: FloatArray) -> Params:
        out, at = [], 0
        for shape, size in zip(shapes, sizes, strict=True):
            out.append(theta[at:at + size].reshape(shape))
            at += size
        return tuple(out)  # type: ignore[return-value]

    def residual(theta: FloatArray) -> FloatArray:
        return np.asarray((_forward(unpack(theta), x) - y).ravel(order="F"))

    def jacobian(theta: FloatArray) -> FloatArray:
        W1, b1, W2, b2, A, G, e = unpack(theta)
        pre1 = x @ W1.T + b1
        m1 = (pre1 > 0).astype(float)
        h = pre1 * m1
        pre2 = h @ W2.T + b2
        m2 = (pre2 > 0).astype(float)
        z = pre2 * m2
        blocks = []
        for k in range(A.shape[0]):  # one block of rows per log-ratio
            a2 = A[k] * m2  # (n, h2): d out / d pre2
            gh = a2 @ W2 + G[k]  # (n, h1): d out / d h
            g1 = gh * m1  # d out / d pre1
            cols = [np.einsum("ni,nj->nij", g1, x).reshape(len(x), -1), g1,
                    np.einsum("ni,nj->nij", a2, h).reshape(len(x), -1), a2]
            ka = np.zeros((len(x), *A.shape))
            ka[:, k, :] = z
            kg = np.zeros((len(x), *G.shape))
            kg[:, k, :] = h
            ke = np.zeros((len(x), len(e)))
            ke[:, k] = 1.0
            cols += [ka.reshape(len(x), -1), kg.reshape(len(x), -1), ke]
            blocks.append(np.column_stack(cols))
        return np.vstack(blocks)

    theta0 = np.concatenate([np.ravel(a) for a in p])
    fit = least_squares(residual, theta0, jac=jacobian, method="lm", xtol=1e-15,
                        ftol=1e-15, gtol=1e-15, max_nfev=200)
    return unpack(fit.x)
