"""Path-finding extraction of decision trees (Tramèr et al., USENIX Security 2016, Sec. 5).

A tree's leaves tile the input domain with axis-aligned boxes, and an API that reveals which
leaf answered (a leaf id, BigML's per-leaf confidence, or the leaf's class distribution)
lets an attacker map each box: from a point in a leaf, move along one feature at a time;
since a box is convex, the leaf changes at most once in each direction, and a binary search
finds where to a stated precision. Where the API accepts incomplete queries (BigML did), a
feature left out stops the path at the first node that tests it, and that node answers.

Two ways to explore, as the API allows:

* ``incomplete=True`` (the API accepts missing features): top-down, as in the paper. With
  every feature missing the root answers. A node that answers tests one of the features
  still missing: a group test (set half of them; the answer moves iff the tested one is in
  that half) names it in 1 + log2(#missing) queries, and the first query of the group test
  (all missing features set) also tells a leaf, which nothing moves. The answer along the
  named feature is piecewise constant; a bisection that splits each interval whose ends
  answer differently finds every threshold (each to ``precision``), and each piece is a child
  to explore. A feature tested again deeper down, after it was set, is invisible from above:
  each leaf checks the two far corners of its box (two queries) and, where one answers
  differently, searches the edge along each set feature and queues the cut-off part.
* ``incomplete=False``: bottom-up from sample points. Features that cannot change a point's
  leaf are found first, with two queries at the domain's edges. The boxes found so far are
  kept, and the next point is drawn from a large free sample of the domain (and the
  attacker's pool) that no known box covers yet; such a point is in an unmapped leaf by
  construction, so no query re-identifies a known leaf. Leaves thinner than the sample's
  spacing can be missed.

A leaf's identity is its id, BigML's (label, confidence), or its probability vector. Pure
leaves of one class share a probability vector; top-down exploration compares a node only
with its own descendants and neighbours along one feature, so this matters far less there
than to the bottom-up boxes (which assume one identity is one convex box); where identities
can repeat, each leaf's set features are checked one at a time instead of by corners.

Needs: a leaf identity (leaf ids, a leaf confidence, or full probabilities). Refused under
label-only and top-k (two neighbouring leaves of one class would merge).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from modelshield.answer import Answer, FloatArray
from modelshield.attacks.base import ASSUMPTION_FAILED, Attack, Session
from modelshield.errors import AttackFailed, AttackRefused, BudgetExhausted, ConfigError
from modelshield.models import BoxClassifier


@dataclass
class PathFinding(Attack):
    """Map a decision tree's leaves as boxes by line searches on the leaf identity."""

    name: ClassVar[str] = "path-finding"
    paper: ClassVar[str] = "Tramèr et al., Stealing ML Models via Prediction APIs, USENIX Sec 2016"
    needs: ClassVar[str] = "leaf identity (leaf id, leaf confidence or full probabilities)"

    precision: float = 1e-3
    incomplete: bool = False
    coverage_samples: int = 20_000
    checks: int = 8
    holdout: int = 300
    holdout_rounds: int = 6

    def validate(self) -> None:
        if not 0 < self.precision < 1:
            raise ConfigError.invalid("precision", "a number in (0, 1)", self.precision)
        if self.checks < 1:
            raise ConfigError.invalid("checks", "an integer >= 1", self.checks)
        if self.holdout < 1:
            raise ConfigError.invalid("holdout", "an integer >= 1", self.holdout)
        if self.holdout_rounds < 1:
            raise ConfigError.invalid("holdout_rounds", "an integer >= 1",
                                      self.holdout_rounds)
        if self.coverage_samples < 1:
            raise ConfigError.invalid("coverage_samples", "an integer >= 1",
                                      self.coverage_samples)

    def extract(self, session: Session, pool: FloatArray | None,
                rng: np.random.Generator) -> tuple[Any, None, dict[str, Any]]:
        spec = session.spec
        if self.incomplete and not spec.accepts_missing:
            raise AttackRefused(self.name, "incomplete (missing-feature) queries",
                                "an API that rejects missing features")
        eps = self.precision * (spec.high - spec.low)
        probe = spec.uniform(self.coverage_samples, rng)
        if spec.integer_features:
            probe = np.round(probe)
        if pool is not None and len(pool):
            probe = np.concatenate([pool, probe])
        if self.incomplete:
            return self._top_down(session, eps, probe, rng)
        mapper = _BoxMapper(session, eps, rng, self.checks)
        exhausted = self._map(mapper, probe, rng)
        repeats = not all(isinstance(i, int) for i in mapper.ids)
        check: dict[str, Any] = {}
        if repeats and not exhausted:
            mix = _held_back_order(len(probe), 0 if pool is None else len(pool), rng)
            exhausted = self._hold_out(session, mapper, probe[mix], rng, check)
        clone = mapper.clone(spec.n_classes)
        session.checkpoint(clone)
        leaves = len(mapper.lows)
        info: dict[str, Any] = {
            "leaves": leaves,
            "distinct_ids": len(set(mapper.ids)),
            "queries_per_leaf": session.used / max(leaves, 1),
            "budget_exhausted": exhausted,
        }
        if repeats:
            info.update(checked_cuts=mapper.cuts, unchecked_boxes=mapper.unchecked, **check)
            _verdict(info)
        return clone, None, info

    def _top_down(self, session: Session, eps: FloatArray, probe: FloatArray,
                  rng: np.random.Generator) -> tuple[Any, None, dict[str, Any]]:
        """Top-down; where answers repeat across leaves, ``holdout_rounds`` rounds of
        ``holdout`` held-back answers, pooled, test the tree it mapped (top-down keeps
        same-answering leaves apart by construction, so there is nothing to cut: the rounds
        only check; all are asked, since stopping once the running agreement passes 99%
        would pass copies that are not)."""
        explorer = _TopDown(session, eps)
        clone, _, info = explorer.run()
        if all(isinstance(n.ident, int) for n in explorer.leaves) or info["budget_exhausted"]:
            return clone, None, info
        order = _held_back_order(len(probe), len(probe) - self.coverage_samples, rng)
        agreed = asked = 0
        for r in range(self.holdout_rounds):
            n = min(self.holdout, session.remaining, len(order) - asked)
            if n < 1:
                info["budget_exhausted"] = asked == 0
                break
            x = probe[order[asked: asked + n]]
            agreed += int(np.sum(clone.predict(x) == session.query(x).labels))
            asked += n
            info.update(holdout_agreement=agreed / asked, holdout_rounds=r + 1,
                        holdout_queries=asked, holdout_last=asked)
        session.checkpoint(clone)  # the last checkpoint counts every query spent
        _verdict(info)
        return clone, None, info

    @staticmethod
    def _map(mapper: _BoxMapper, probe: FloatArray, rng: np.random.Generator) -> bool:
        """Map leaves from probe points no box covers yet; True if the budget ran out.
        Boxes are only added here, so the rows left are narrowed by each new box alone."""
        left = probe[~mapper.covered(probe)]
        while True:
            if len(left) == 0:
                return False
            if not mapper.affordable():
                return True
            boxes = len(mapper.lows)
            try:
                mapper.explore(left[rng.integers(len(left))])
            except BudgetExhausted:  # the budget ran out inside a leaf: that leaf is dropped
                return True
            left = left[~mapper.covered(left, boxes)]

    def _hold_out(self, session: Session, mapper: _BoxMapper, probe: FloatArray,
                  rng: np.random.Generator, check: dict[str, Any]) -> bool:
        """Answers that repeat across leaves: test the mapped tree on ``holdout`` answers it
        was not built from (``probe``, in the order to ask it). Each point that disagrees
        is a box to cut (or a leaf no box covers), and the tree is mapped on and tested
        again on fresh points, until a round agrees throughout or ``holdout_rounds`` have
        been asked; the last round's agreement is the verdict's. Fills ``check``; returns
        True if the budget ran out."""
        order = np.arange(len(probe))
        for r in range(self.holdout_rounds):
            n = min(self.holdout, session.remaining, len(order))
            if n < 1:
                return True
            x, order = probe[order[:n]], order[n:]
            answer = session.query(x)
            clone = mapper.clone(session.spec.n_classes)
            agree = float(np.mean(clone.predict(x) == answer.labels))
            check.update(holdout_agreement=agree, holdout_rounds=r + 1, holdout_last=n,
                         holdout_queries=check.get("holdout_queries", 0) + n)
            if agree == 1.0 or r == self.holdout_rounds - 1:
                return False
            try:
                for z, box, ident in zip(x, clone.apply(x), _ident(answer), strict=True):
                    if mapper.ids[box] != ident:
                        mapper.fix(int(box), z)
            except BudgetExhausted:
                return True
            if self._map(mapper, probe, rng):
                return True
        return False


def _held_back_order(rows: int, pool_rows: int, rng: np.random.Generator) -> np.ndarray:
    """The order to ask held-back points in, from the coverage sample (the attacker's pool
    first, then uniform points): half of them pool rows while the pool lasts, since the
    copy's users ask there."""
    pool = rng.permutation(pool_rows)
    uniform = pool_rows + rng.permutation(rows - pool_rows)
    k = min(len(pool), len(uniform))
    mixed = np.empty(2 * k, dtype=np.int64)
    mixed[0::2], mixed[1::2] = pool[:k], uniform[:k]
    return np.concatenate([mixed, pool[k:], uniform[k:]])


def _verdict(info: dict[str, Any]) -> None:
    """The status of a tree mapped from answers that repeat across leaves: failed where the
    held-back answers disagree with it; a note where the budget left it unchecked."""
    why = (f"the answers do not identify leaves ({info['distinct_ids']} distinct outputs "
           f"for {info.get('boxes', info['leaves'])} mapped boxes)")
    agree = info.get("holdout_agreement")
    if info["budget_exhausted"]:
        last = "" if agree is None else f" (last held-back agreement {agree:.1%})"
        info["budget_note"] = (f"{why}, and the budget ran out before the mapped tree was "
                               f"checked against held-back answers{last}: its fidelity is "
                               "unverified")
    elif agree is not None and agree < HOLDOUT_AGREEMENT:
        info[ASSUMPTION_FAILED] = (
            f"{why}: the mapped tree agrees with only {agree:.1%} of the last "
            f"{info['holdout_last']} held-back answers, after "
            f"{info['holdout_rounds']} rounds of checks; path-finding needs each leaf to "
            "answer apart (a leaf-id output), or knockoff on these answers copies it better")


@dataclass
class _Node:
    """A node to explore: a partial query (NaN = missing) that reaches it, the box of inputs
    known to share its path so far, and its answer."""

    x: FloatArray
    lo: FloatArray
    hi: FloatArray
    ident: object
    label: int


CHECKPOINTS = (100, 300, 1000, 3000, 10_000, 30_000)
MAX_CUTS = 32  # rounds of checks a box gets before it is kept as it stands
HOLDOUT_AGREEMENT = 0.99  # below it, a tree mapped from repeating answers is not a copy


class _TopDown:
    """Top-down exploration with incomplete queries (see the module's docstring)."""

    def __init__(self, session: Session, eps: FloatArray) -> None:
        self.session = session
        spec = self.spec = session.spec
        self.integer = spec.integer_features
        self.eps = np.ones_like(eps) if self.integer else eps
        mid = (spec.low + spec.high) / 2
        self.mid = np.round(mid) if self.integer else mid
        self.leaves: list[_Node] = []
        self.marks = [c for c in CHECKPOINTS if c < session.budget]

    def ask(self, rows: FloatArray) -> list[tuple[object, int]]:
        answer = self.session.query(rows)
        self.session.require(answer, "leaf identity")
        return list(zip(_ident(answer), (int(v) for v in answer.labels), strict=True))

    def run(self) -> tuple[Any, None, dict[str, Any]]:
        d = self.spec.n_features
        queue: deque[_Node] = deque()
        exhausted = False
        edges_moved = 0
        try:
            x0 = np.full(d, np.nan)
            ident, label = self.ask(x0)[0]
            queue.append(_Node(x0, self.spec.low.copy(), self.spec.high.copy(), ident, label))
            while queue:
                node = queue[0]
                edges_moved += self.visit(node, queue)
                queue.popleft()
                if self.marks and self.session.used >= self.marks[0]:
                    self.marks.pop(0)
                    self.session.checkpoint(self.clone(queue))
        except BudgetExhausted:
            exhausted = True
        clone = self.clone(queue)
        self.session.checkpoint(clone)
        # A leaf re-tested from several sides is reached as several boxes; its identity
        # counts it once (pure leaves of a class share one identity under full scores).
        leaves = len({n.ident for n in self.leaves})
        return clone, None, {
            "leaves": leaves,
            "boxes": len(self.leaves),
            "distinct_ids": leaves,
            "queries_per_leaf": self.session.used / max(leaves, 1),
            "unexplored_nodes": len(queue),
            "retested_edges": edges_moved,
            "budget_exhausted": exhausted,
        }

    def visit(self, node: _Node, queue: deque[_Node]) -> int:
        """Explore one node: a leaf is checked and kept; an internal node queues its
        children. Returns the number of leaf edges a deeper re-test moved."""
        missing = np.flatnonzero(np.isnan(node.x))
        if missing.size == 0 or not self._moves(node, missing):
            return self.leaf(node, queue)
        candidates = missing
        while len(candidates) > 1:  # group test: which missing feature does the node test?
            half = candidates[: len(candidates) // 2]
            candidates = half if self._moves(node, half) else candidates[len(half):]
        f = int(candidates[0])
        for value, (start, end), ident, label in self.pieces(node.x, f):
            x = node.x.copy()
            x[f] = value
            lo_, hi_ = node.lo.copy(), node.hi.copy()
            lo_[f], hi_[f] = start, end
            queue.append(_Node(x, lo_, hi_, ident, label))
        return 0

    def _moves(self, node: _Node, features: np.ndarray) -> bool:
        probe = node.x.copy()
        probe[features] = self.mid[features]
        return self.ask(probe)[0][0] != node.ident

    def pieces(self, x: FloatArray, f: int) -> list[tuple[float, tuple[float, float], object,
                                                         int]]:
        """Where the answer changes along feature f (the rest as in x): one entry per piece,
        (a value inside it, its (low, high] bounds, its identity, its label)."""
        low, high = float(self.spec.low[f]), float(self.spec.high[f])
        probes = np.repeat(x[None, :], 2, axis=0)
        probes[:, f] = (low, high)
        samples = dict(zip((low, high), self.ask(probes), strict=True))
        stack = [(low, high)]
        while stack:
            u, w = stack.pop()
            if w - u <= self.eps[f]:
                continue
            if samples[u][0] == samples[w][0] and (not _one_hot(samples[u][0])
                                                   or w - u < (high - low) / 8):
                # One identity at both ends: one piece. A one-hot vector is not one leaf,
                # though (every pure leaf of a class gives it), so a span with one-hot ends
                # is split down to an eighth of the range before it is believed.
                continue
            m = (u + w) / 2
            if self.integer:
                m = float(np.floor(m))
                if m == u:
                    continue
            probe = x.copy()
            probe[f] = m
            samples[m] = self.ask(probe)[0]
            stack += [(u, m), (m, w)]
        values = sorted(samples)
        out = []
        start = low
        for i, v in enumerate(values):
            last = i == len(values) - 1
            if last or samples[values[i + 1]][0] != samples[v][0]:
                end = high if last else (v + values[i + 1]) / 2
                ident, label = samples[v]
                out.append((v, (start, end), ident, label))
                start = end
        return out

    def leaf(self, node: _Node, queue: deque[_Node]) -> int:
        """Keep a leaf, after checking that no feature set above it is tested again below:
        the two far corners of its box answer as it does, or the edges that moved are found
        and the parts cut off are queued."""
        known = np.flatnonzero(~np.isnan(node.x))
        moved = 0
        if known.size:
            inner_lo, inner_hi = self._inside(node, known)
            Answers = list[tuple[object, int] | None]  # per set feature; None: not asked
            far: list[Answers]
            if _ambiguous(node.ident):
                # A corner in another leaf that answers alike would pass for this one: move
                # one feature at a time instead (2 queries a set feature, in one batch).
                k = len(known)
                probes = np.repeat(node.x[None, :], 2 * k, axis=0)
                probes[np.arange(k), known] = inner_lo
                probes[k + np.arange(k), known] = inner_hi
                answers: Answers = list(self.ask(probes))
                far = [answers[:k], answers[k:]]
            else:
                corners = np.repeat(node.x[None, :], 2, axis=0)
                corners[0, known], corners[1, known] = inner_lo, inner_hi
                # A corner that answers differently does not say which feature moved it.
                far = [[a] * len(known) if a[0] == node.ident else [None] * len(known)
                       for a in self.ask(corners)]
            for side, seen in zip(("low", "high"), far, strict=True):
                if all(a is not None and a[0] == node.ident for a in seen):
                    continue
                ends = inner_lo if side == "low" else inner_hi
                for g, end, known_answer in zip(known, ends, seen, strict=True):
                    if end == node.x[g]:
                        continue
                    probe = node.x.copy()
                    probe[g] = end
                    other = known_answer or self.ask(probe)[0]
                    if other[0] == node.ident:
                        continue
                    edge = self._edge(node, int(g), float(end))
                    lo_, hi_ = node.lo.copy(), node.hi.copy()
                    if side == "low":
                        hi_[g] = edge
                        node.lo[g] = edge
                    else:
                        lo_[g] = edge
                        node.hi[g] = edge
                    queue.append(_Node(probe, lo_, hi_, other[0], other[1]))
                    moved += 1
        self.leaves.append(node)
        return moved

    def _inside(self, node: _Node, known: np.ndarray) -> tuple[FloatArray, FloatArray]:
        """Points just inside the box's low and high edges on the set features."""
        lo, hi, x = node.lo[known], node.hi[known], node.x[known]
        at_low, at_high = lo <= self.spec.low[known], hi >= self.spec.high[known]
        if self.integer:
            a, b = np.floor(lo) + 1, np.floor(hi)
        else:
            a, b = lo + self.eps[known], hi - self.eps[known]
        a = np.where(at_low, self.spec.low[known], np.minimum(a, x))
        b = np.where(at_high, self.spec.high[known], np.maximum(b, x))
        return a, b

    def _edge(self, node: _Node, g: int, end: float) -> float:
        """Bisect along feature g between the node's point (its identity) and ``end``."""
        same, other = float(node.x[g]), end
        probe = node.x.copy()
        while abs(other - same) > self.eps[g]:
            mid = (same + other) / 2
            if self.integer:
                mid = float(np.ceil(mid) if other > same else np.floor(mid))
                if mid in (same, other):
                    break
            probe[g] = mid
            if self.ask(probe)[0][0] == node.ident:
                same = mid
            else:
                other = mid
        return (same + other) / 2

    def clone(self, queue: deque[_Node]) -> BoxClassifier:
        """The leaves found, and the nodes not yet explored as boxes with their own label."""
        boxes = self.leaves + list(queue)
        if not boxes:
            raise AttackFailed("the budget ran out before the root was queried")
        low, high = self.spec.low, self.spec.high
        lows = np.array([np.where(n.lo <= low, -np.inf, n.lo) for n in boxes])
        highs = np.array([np.where(n.hi >= high, np.inf, n.hi) for n in boxes])
        return BoxClassifier(lows, highs, np.array([n.label for n in boxes]),
                             self.spec.n_classes).fit()


class _BoxMapper:
    """Finds the box of the leaf containing a point, one feature at a time."""

    def __init__(self, session: Session, eps: FloatArray, rng: np.random.Generator,
                 checks: int) -> None:
        self.session = session
        self.spec = session.spec
        self.rng = rng
        self.checks = checks
        self.seeds: list[FloatArray] = []
        self.cuts = 0  # check points that answered otherwise, each a cut
        self.unchecked = 0  # boxes the budget (or MAX_CUTS) left not fully checked
        self.integer = self.spec.integer_features
        self.eps = np.ones_like(eps) if self.integer else eps
        # Edges between integers are exact; continuous edges are known to within eps.
        self.slack = np.zeros_like(eps) if self.integer else eps
        self.lows: list[FloatArray] = []
        self.highs: list[FloatArray] = []
        self.labels: list[int] = []
        self.ids: list[object] = []
        self.steps = int(np.ceil(np.log2(np.max((self.spec.high - self.spec.low) / self.eps)))) + 1

    def affordable(self) -> bool:
        """Enough budget left to start one more leaf: its first query and the probes that
        find the features on its path. No worst case is reserved: a leaf the budget cuts
        short is dropped, and the queries it took are reported with the rest."""
        return self.session.remaining >= 1 + 2 * self.spec.n_features

    def covered(self, x: FloatArray, start: int = 0) -> np.ndarray:
        """Which rows of x lie in a box (the boxes from index ``start`` on)."""
        out = np.zeros(len(x), dtype=bool)
        for lo, hi in zip(self.lows[start:], self.highs[start:], strict=True):
            out |= np.all((x > lo - self.slack) & (x <= hi + self.slack), axis=1)
        return out

    def explore(self, x: FloatArray) -> None:
        first = self.session.query(x)
        self.session.require(first, "leaf identity")
        leaf = _ident(first)[0]
        d = self.spec.n_features
        lo, hi = np.full(d, -np.inf), np.full(d, np.inf)
        for i in self._features_on_path(x, leaf):
            hi[i] = self._edge(x, i, leaf, "high")
            lo[i] = self._edge(x, i, leaf, "low")
        if not isinstance(leaf, int):  # another leaf may answer alike: check the box
            self._verify(x, leaf, lo, hi)
        self.lows.append(lo)
        self.highs.append(hi)
        self.labels.append(int(first.labels[0]))
        self.ids.append(leaf)
        self.seeds.append(x)

    def fix(self, box: int, z: FloatArray) -> None:
        """A point that the tree puts in ``box`` but that answers otherwise: cut the box
        where the walk from its seed to z changes answer (unless z lies outside every box
        and only fell to the nearest), then map z's own leaf."""
        lo, hi = self.lows[box], self.highs[box]
        if np.all((z > lo - self.slack) & (z <= hi + self.slack)):
            self.cuts += 1
            self._cut(self.seeds[box], self.ids[box], z, lo, hi)
        if not self.covered(z[None, :])[0]:
            self.explore(z)

    def _verify(self, x: FloatArray, leaf: object, lo: FloatArray, hi: FloatArray) -> None:
        """Shrink the box (in place) until ``checks`` points drawn in it, most on its faces
        and corners, answer as ``x`` does. The line searches from ``x`` run on through a
        neighbour that answers alike, and the product of their spans then takes in points
        of other leaves; each point that answers otherwise is walked to from ``x`` one
        feature at a time, and the box is cut where that walk's answer changes."""
        for _ in range(MAX_CUTS):
            if self.session.remaining < self.checks:
                self.unchecked += 1
                return
            points = self._inside(lo, hi, self.checks)
            answers = _ident(self.session.query(points))
            wrong = [p for p, a in zip(points, answers, strict=True) if a != leaf]
            if not wrong:
                return
            self.cuts += 1
            self._cut(x, leaf, wrong[0], lo, hi)
        self.unchecked += 1

    def _inside(self, lo: FloatArray, hi: FloatArray, n: int) -> FloatArray:
        """``n`` points in the box: each feature at one of its ends (just inside) with
        probability 1/2, else uniform between them."""
        a = np.maximum(lo + self.slack, self.spec.low)
        b = np.minimum(hi - self.slack, self.spec.high)
        a, b = np.minimum(a, b), np.maximum(a, b)
        u = self.rng.uniform(0.0, 1.0, (n, len(a)))
        end = self.rng.integers(0, 3, (n, len(a)))  # 0: low end, 1: high end, 2: anywhere
        u = np.where(end == 0, 0.0, np.where(end == 1, 1.0, u))
        points = np.clip(a + u * (b - a), a, b)  # a + 1.0 * (b - a) may pass b by an ulp
        if self.integer:
            points = np.clip(np.round(points), np.ceil(a), np.floor(b))
        return np.asarray(points)

    def _cut(self, x: FloatArray, leaf: object, z: FloatArray, lo: FloatArray,
             hi: FloatArray) -> None:
        """Walk from x to z one differing feature at a time; where the answer first changes,
        bisect along that feature and cut the box there, on z's side."""
        steps = np.flatnonzero(z != x)
        path = np.repeat(x[None, :], len(steps), axis=0)
        for k, g in enumerate(steps):
            path[k:, g] = z[g]
        answers = _ident(self.session.query(path[:-1])) if len(steps) > 1 else []
        first = next((i for i, a in enumerate(answers) if a != leaf), len(steps) - 1)
        f = int(steps[first])
        base = x if first == 0 else path[first - 1]
        edge = self._bisect(base, f, float(z[f]), leaf)
        if z[f] > x[f]:
            hi[f] = min(hi[f], edge)
        else:
            lo[f] = max(lo[f], edge)

    def _features_on_path(self, x: FloatArray, leaf: object) -> list[int]:
        """Features whose value can change the leaf, by one batch of probe queries."""
        d = self.spec.n_features
        probes = np.repeat(x[None, :], 2 * d, axis=0)
        probes[np.arange(d), np.arange(d)] = self.spec.high
        probes[d + np.arange(d), np.arange(d)] = self.spec.low
        ids = _ident(self.session.query(probes))
        self._edge_ids = {(i, "high"): ids[i] for i in range(d)}
        self._edge_ids.update({(i, "low"): ids[d + i] for i in range(d)})
        return [i for i in range(d) if ids[i] != leaf or ids[d + i] != leaf]

    def _edge(self, x: FloatArray, i: int, leaf: object, side: str) -> float:
        """Where along feature i, from x towards the domain's ``side``, the leaf changes.

        Returns ±inf when it never does.
        """
        end = float(self.spec.high[i] if side == "high" else self.spec.low[i])
        if self._edge_ids[(i, side)] == leaf:
            return np.inf if side == "high" else -np.inf
        return self._bisect(x, i, end, leaf)

    def _bisect(self, x: FloatArray, i: int, end: float, leaf: object) -> float:
        """Where, between x (answering ``leaf``) and x moved to ``end`` along feature i (not
        answering it), the answer changes, to within eps."""
        same, other = float(x[i]), float(end)
        probe = x.copy()
        while abs(other - same) > self.eps[i]:
            mid = (same + other) / 2
            # Integer inputs: search the integers, so the edge falls exactly between two.
            if self.integer:
                mid = np.ceil(mid) if other > same else np.floor(mid)
                if mid in (same, other):
                    break
            probe[i] = mid
            if _ident(self.session.query(probe))[0] == leaf:
                same = probe[i]
            else:
                other = probe[i]
        return (same + other) / 2

    def clone(self, n_classes: int) -> BoxClassifier:
        if not self.lows:
            raise AttackFailed("the budget ran out before one leaf was mapped")
        return BoxClassifier(np.array(self.lows), np.array(self.highs),
                             np.array(self.labels), n_classes).fit()


def _ambiguous(ident: object) -> bool:
    """Whether leaves other than this one may answer alike: every pure leaf of a class gives
    one probability vector, and BigML's (label, confidence) repeats for leaves of one class
    and size. Only a leaf id is unique."""
    return isinstance(ident, tuple) and (ident[0] == "c" or max(ident[1:]) == 1.0)


def _one_hot(ident: object) -> bool:
    return isinstance(ident, tuple) and ident[0] == "p" and max(ident[1:]) == 1.0


def _ident(answer: Answer) -> list[object]:
    """A hashable identity per row: the leaf id, else (label, confidence), else the scores."""
    if answer.leaf_ids is not None:
        return [int(v) for v in answer.leaf_ids]
    if answer.confidence is not None:
        return [("c", int(lab), round(float(c), 12))
                for lab, c in zip(answer.labels, answer.confidence, strict=True)]
    assert answer.probabilities is not None
    return [("p", *np.round(row, 12).tolist()) for row in answer.probabilities]
