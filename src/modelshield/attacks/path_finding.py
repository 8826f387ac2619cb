"""Path-finding extraction of decision trees (Tramèr et al., USENIX Security 2016, Sec. 5).

A tree's leaves tile the input domain with axis-aligned boxes, and an API that reveals which
leaf answered (a leaf id, BigML's per-leaf confidence, or the leaf's class distribution)
lets an attacker map each box: from a point in a leaf, move along one feature at a time;
since a box is convex, the leaf changes at most once in each direction, and a binary search
finds where to a stated precision. Features that cannot change the leaf are found first, with
two queries at the domain's edges or, where the API accepts incomplete queries, one query
with that feature left out (the path then stops at the first node testing it, so the leaf
answers only if no node on its path tests the feature).

Where we depart from the paper: the paper explores top-down with incomplete queries and
pushes the points found across each boundary onto a queue. We instead keep the boxes found so
far and pick the next point from a large free sample of the domain (and the attacker's pool)
that no known box covers yet; such a point is in an unmapped leaf by construction, so no
query is spent re-identifying known leaves, and leaves no axis line from a known point meets
are still found. Leaves thinner than the sample's spacing can be missed.

Needs: a leaf identity (leaf ids, a leaf confidence, or full probabilities). Refused under
label-only and top-k (two neighbouring leaves of one class would merge).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from modelshield.answer import Answer, FloatArray
from modelshield.attacks.base import Attack, Session
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

    def validate(self) -> None:
        if not 0 < self.precision < 1:
            raise ConfigError.invalid("precision", "a number in (0, 1)", self.precision)
        if self.coverage_samples < 1:
            raise ConfigError.invalid("coverage_samples", "an integer >= 1",
                                      self.coverage_samples)

    def extract(self, session: Session, pool: FloatArray | None,
                rng: np.random.Generator) -> tuple[Any, None, dict[str, Any]]:
        spec = session.spec
        if self.incomplete and not spec.accepts_missing:
            raise AttackRefused(self.name, "incomplete (missing-feature) queries",
                                "an API that rejects missing features")
        probe = spec.uniform(self.coverage_samples, rng)
        if spec.integer_features:
            probe = np.round(probe)
        if pool is not None and len(pool):
            probe = np.concatenate([pool, probe])
        mapper = _BoxMapper(session, self.precision * (spec.high - spec.low), self.incomplete)
        exhausted = False
        while True:
            left = probe[~mapper.covered(probe)]
            if len(left) == 0:
                break
            if not mapper.affordable():
                exhausted = True
                break
            try:
                mapper.explore(left[rng.integers(len(left))])
            except BudgetExhausted:  # the budget ran out inside a leaf: that leaf is dropped
                exhausted = True
                break
        clone = mapper.clone(spec.n_classes)
        session.checkpoint(clone)
        leaves = len(mapper.lows)
        return clone, None, {
            "leaves": leaves,
            "distinct_ids": len(set(mapper.ids)),
            "queries_per_leaf": session.used / max(leaves, 1),
            "budget_exhausted": exhausted,
        }


class _BoxMapper:
    """Finds the box of the leaf containing a point, one feature at a time."""

    def __init__(self, session: Session, eps: FloatArray, incomplete: bool) -> None:
        self.session = session
        self.spec = session.spec
        self.integer = self.spec.integer_features
        self.eps = np.ones_like(eps) if self.integer else eps
        # Edges between integers are exact; continuous edges are known to within eps.
        self.slack = np.zeros_like(eps) if self.integer else eps
        self.incomplete = incomplete
        self.lows: list[FloatArray] = []
        self.highs: list[FloatArray] = []
        self.labels: list[int] = []
        self.ids: list[object] = []
        self.steps = int(np.ceil(np.log2(np.max((self.spec.high - self.spec.low) / self.eps)))) + 1

    def affordable(self) -> bool:
        """Enough budget left to start one more leaf: its first query and the probes that
        find the features on its path. No worst case is reserved: a leaf the budget cuts
        short is dropped, and the queries it took are reported with the rest."""
        d = self.spec.n_features
        return self.session.remaining >= 1 + (d if self.incomplete else 2 * d)

    def covered(self, x: FloatArray) -> np.ndarray:
        out = np.zeros(len(x), dtype=bool)
        for lo, hi in zip(self.lows, self.highs, strict=True):
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
        self.lows.append(lo)
        self.highs.append(hi)
        self.labels.append(int(first.labels[0]))
        self.ids.append(leaf)

    def _features_on_path(self, x: FloatArray, leaf: object) -> list[int]:
        """Features whose value can change the leaf, by one batch of probe queries."""
        d = self.spec.n_features
        if self.incomplete:
            probes = np.repeat(x[None, :], d, axis=0)
            probes[np.arange(d), np.arange(d)] = np.nan
            ids = _ident(self.session.query(probes))
            return [i for i in range(d) if ids[i] != leaf]
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
        if not self.incomplete:
            far = self._edge_ids[(i, side)]
        else:
            probe = x.copy()
            probe[i] = end
            far = _ident(self.session.query(probe))[0]
        if far == leaf:
            return np.inf if side == "high" else -np.inf
        same, other = float(x[i]), float(end)
        probe = x.copy()
        while abs(other - same) > self.eps[i]:
            mid = (same + other) / 2
            # Integer inputs: search the integers, so the edge falls exactly between two.
            if self.integer:
                mid = np.ceil(mid) if other > same else np.floor(mid)
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


def _ident(answer: Answer) -> list[object]:
    """A hashable identity per row: the leaf id, else (label, confidence), else the scores."""
    if answer.leaf_ids is not None:
        return [int(v) for v in answer.leaf_ids]
    if answer.confidence is not None:
        return [(int(lab), round(float(c), 12))
                for lab, c in zip(answer.labels, answer.confidence, strict=True)]
    assert answer.probabilities is not None
    return [tuple(np.round(row, 12)) for row in answer.probabilities]
