"""Query-pattern detectors: each watches one account's stream and says when it looks like
extraction, with a score (>= 1 means flagged) and a reason.

State is kept per account in process memory. Each detector is calibrated on benign traffic
(the victim's own training and test data) when the Shield is built.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy import stats

from modelshield.answer import FloatArray, Prediction
from modelshield.errors import ConfigError
from modelshield.registry import Registry

DETECTORS: Registry[type[Detector]] = Registry("detector")


@dataclass(frozen=True)
class Flag:
    detector: str
    score: float
    reason: str


class Detector:
    """Base: ``observe`` one batch of an account's queries, return a Flag once it trips."""

    name: ClassVar[str]
    min_queries: int = 50

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            DETECTORS.add(cls.name, cls)

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        """Learn what benign traffic looks like (called once when the Shield is built)."""

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        raise NotImplementedError


@dataclass
class Volume(Detector):
    """Rows per account beyond what a benign customer sends."""

    name: ClassVar[str] = "volume"
    max_rows: int = 5000
    seen: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        self.seen[account] += len(inputs)
        score = self.seen[account] / self.max_rows
        return Flag(self.name, score, f"{self.seen[account]} rows sent") if score >= 1 else None


@dataclass
class Sweep(Detector):
    """Line searches: queries that change one feature of a recent query, or that step
    along the same direction as earlier steps (bisection on a line, as equation solving,
    path finding and Lowd-Meek do). Re-sending a recent query is not counted."""

    name: ClassVar[str] = "sweep"
    window: int = 64
    max_share: float = 0.2
    history: dict[str, _Ring] = field(default_factory=dict)
    steps: dict[str, _Ring] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        d = inputs.shape[1]
        recent = self.history.setdefault(account, _Ring(self.window, d))
        steps = self.steps.setdefault(account, _Ring(self.window, d))
        hits, total = self.counts[account]
        for row in np.nan_to_num(inputs, nan=-1e300):
            if len(recent):
                hits += int(self._is_sweep(recent, row, steps))
            total += 1
            recent.append(row)
        self.counts[account] = [hits, total]
        if total < self.min_queries:
            return None
        score = (hits / total) / self.max_share
        return Flag(self.name, score, f"{hits} of {total} queries continue a line search "
                    "(one feature changed, or a repeated step direction)") if score >= 1 else None

    @staticmethod
    def _is_sweep(recent: _Ring, row: FloatArray, steps: _Ring) -> bool:
        changed = np.count_nonzero(np.abs(recent.view() - row) > 1e-12, axis=1)
        if np.any(changed == 0):  # re-sending a recent query is no search step
            return False
        near = recent.latest(8) - row
        dirs = near / np.linalg.norm(near, axis=1, keepdims=True)
        repeated = len(steps) > 0 and bool(np.any(np.abs(dirs @ steps.view().T) > 1 - 1e-9))
        steps.append(dirs[-1])
        return bool(np.any(changed == 1)) or repeated


@dataclass
class Boundary(Detector):
    """A share of low-margin queries well above what benign traffic has.

    Flags when the share exceeds ``factor`` times the benign share *and* a one-sided
    binomial z-test against the benign share exceeds ``z`` (so small accounts are not
    flagged on noise).
    """

    name: ClassVar[str] = "boundary"
    margin: float = 0.2
    factor: float = 2.0
    z: float = 4.0
    baseline: float = 0.05
    counts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        self.baseline = max(float(np.mean(_margins(predict(benign)) < self.margin)), 0.01)

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        c = self.counts[account]
        c[0] += int(np.sum(_margins(prediction) < self.margin))
        c[1] += len(inputs)
        if c[1] < self.min_queries:
            return None
        share, p0 = c[0] / c[1], self.baseline
        z = (c[0] - c[1] * p0) / np.sqrt(c[1] * p0 * (1 - p0))
        score = min(share / (self.factor * p0), z / self.z)
        return Flag(self.name, score, f"{share:.0%} of queries near the decision boundary "
                    f"(benign: {p0:.0%}, z = {z:.1f})") if score >= 1 else None


@dataclass
class OutOfDistribution(Detector):
    """A share of queries far from the natural data, well above the benign rate.

    "Far" is beyond the 99th percentile of benign points' distance to their nearest
    neighbour among ``size`` reference points (standardised features).
    """

    name: ClassVar[str] = "ood"
    max_share: float = 0.3
    size: int = 512
    reference: FloatArray | None = None
    radius: float = np.inf
    scale: FloatArray | None = None
    counts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        self.scale = np.maximum(benign.std(axis=0), 1e-9)
        ref = np.random.default_rng(0).permutation(benign / self.scale)[:2 * self.size]
        half = len(ref) // 2
        self.reference = ref[:half]
        self.radius = float(np.quantile(_nearest(ref[half:], self.reference), 0.99))

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        if self.reference is None or self.scale is None:
            return None
        x = np.nan_to_num(inputs) / self.scale
        c = self.counts[account]
        c[0] += int(np.sum(_nearest(x, self.reference) > self.radius))
        c[1] += len(inputs)
        if c[1] < self.min_queries:
            return None
        score = (c[0] / c[1]) / self.max_share
        return Flag(self.name, score, f"{c[0]} of {c[1]} queries far from the training "
                    "data") if score >= 1 else None


@dataclass
class Prada(Detector):
    """PRADA (Juuti et al., EuroS&P 2019), per account.

    For each query, the distance to the nearest earlier query the model gave the same class
    (from a growing set per class) is recorded; benign streams give roughly normal
    distances, synthetic extraction queries do not. A Shapiro-Wilk statistic below
    ``delta`` flags the account. The reference implementation keeps one global state and
    tests after every query; we keep one state per account, keep the running mean and
    spread incrementally, and test every ``every`` new distances.
    """

    name: ClassVar[str] = "prada"
    delta: float = 0.9
    min_queries: int = 100
    every: int = 25
    growing: dict[str, dict[int, _Rows]] = field(default_factory=dict)
    distances: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    moments: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    last: dict[str, Flag | None] = field(default_factory=dict)

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        """Lower ``delta`` below what benign streams reach: 20 shuffled benign streams of
        up to 300 rows each; delta becomes at most 0.98 x their lowest W."""
        rng = np.random.default_rng(0)
        labels = predict(benign).labels
        lowest = 1.0
        for _ in range(20):
            order = rng.permutation(len(benign))[:300]
            probe = Prada(delta=self.delta, min_queries=self.min_queries, every=10**9)
            probe.observe("calibration", benign[order], Prediction(np.eye(labels.max() + 1)[
                labels[order]]))
            d = probe.distances["calibration"]
            if len(d) >= 20:
                lowest = min(lowest, float(stats.shapiro(np.asarray(d)).statistic))
        self.delta = min(self.delta, 0.98 * lowest)

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        sets = self.growing.setdefault(account, {})
        dists = self.distances[account]
        m = self.moments[account]  # Welford: count, mean, sum of squared deviations
        before = len(dists)
        for row, label in zip(np.nan_to_num(inputs), prediction.labels, strict=True):
            g = sets.setdefault(int(label), _Rows(len(row)))
            if not len(g):
                g.append(row)
                continue
            d = float(np.sqrt(np.min(np.sum((g.view() - row) ** 2, axis=1))))
            if d == 0.0:  # a repeated query tells nothing about the query distribution
                continue
            dists.append(d)
            m[0] += 1
            delta = d - m[1]
            m[1] += delta / m[0]
            m[2] += delta * (d - m[1])
            if d > m[1] - np.sqrt(m[2] / m[0]):
                g.append(row)
        if len(dists) < self.min_queries:
            return None
        if account in self.last and len(dists) // self.every == before // self.every:
            return self.last[account]
        w = float(stats.shapiro(np.asarray(dists[-1000:])).statistic)
        flag = Flag(self.name, (1 - w) / (1 - self.delta),
                    f"Shapiro-Wilk W = {w:.3f} < {self.delta}") if w < self.delta else None
        self.last[account] = flag
        return flag


class _Ring:
    """The last ``size`` rows of a stream, in a fixed array (order does not matter)."""

    def __init__(self, size: int, d: int) -> None:
        self._data = np.empty((size, d))
        self._n = 0

    def __len__(self) -> int:
        return min(self._n, len(self._data))

    def append(self, row: FloatArray) -> None:
        self._data[self._n % len(self._data)] = row
        self._n += 1

    def view(self) -> FloatArray:
        return self._data[: len(self)]

    def latest(self, k: int) -> FloatArray:
        """The ``k`` most recent rows (fewer if fewer were added)."""
        idx = (self._n - 1 - np.arange(min(k, len(self)))) % len(self._data)
        return self._data[idx]


class _Rows:
    """A growable (n, d) array: amortised O(1) appends, a view for vector maths."""

    def __init__(self, d: int) -> None:
        self._data = np.empty((16, d))
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, row: FloatArray) -> None:
        if self._n == len(self._data):
            self._data = np.concatenate([self._data, np.empty_like(self._data)])
        self._data[self._n] = row
        self._n += 1

    def view(self) -> FloatArray:
        return self._data[: self._n]


def make_detector(name: str, **params: Any) -> Detector:
    cls = DETECTORS[name]
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"Detector {name!r}: {exc}") from None


def _margins(prediction: Prediction) -> FloatArray:
    top2 = np.sort(prediction.probabilities, axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0])


def _nearest(x: FloatArray, ref: FloatArray) -> FloatArray:
    d = (x * x).sum(1)[:, None] - 2 * x @ ref.T + (ref * ref).sum(1)[None, :]
    return np.asarray(np.sqrt(np.maximum(d.min(axis=1), 0.0)))
