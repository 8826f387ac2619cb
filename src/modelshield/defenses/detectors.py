"""Query-pattern detectors: each watches one account's stream and says when it looks like
extraction, with a score (>= 1 means flagged) and a reason.

State is kept per account in a :mod:`~modelshield.defenses.state` store: process memory, or
the Redis that holds the rate limits, so every replica sees the same account.

Each detector is calibrated on the owner's natural data when the Shield is built, for a
per-account false-positive budget ``alpha`` (the tier's ``fpr`` shared among its
detectors). The rate tests (``sweep``, ``boundary``, ``ood``) are one-sided binomial tests
of an account's distinct rows against the highest rate honest traffic shows in the
calibration data; an account is tested as its count crosses a geometric schedule of
checkpoints, look k spending ``alpha * 6 / (pi^2 (k+1)^2)``, so that the looks together
spend at most ``alpha`` (a union bound). ``prada`` sets its threshold from simulated honest
streams. Repeated rows are counted once (:func:`fresh_rows`).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
from scipy import stats

from modelshield.answer import FloatArray, IntArray, LMRequest, Prediction
from modelshield.defenses.state import DetectorState, MemoryState, Read
from modelshield.errors import ConfigError
from modelshield.registry import Registry

DETECTORS: Registry[type[Detector]] = Registry("detector")
T = TypeVar("T")


@dataclass(frozen=True)
class Flag:
    detector: str
    score: float
    reason: str


@dataclass
class Detector:
    """Base: ``observe`` one batch of an account's queries, return a Flag once it trips."""

    name: ClassVar[str]
    min_queries: int = 50
    # The per-account false-positive budget: the share of honest accounts this detector
    # may flag (the Shield sets it from the tier's fpr).
    alpha: float = 1e-4
    state: DetectorState = field(default_factory=MemoryState, repr=False)
    # Which of an account's rows the detector sees: "fresh" (rows it has not sent
    # before), "records" (fresh rows that are not edits of one of its recent rows: see
    # edit_mask) or "all".
    sees: ClassVar[str] = "records"
    # Whether it must be calibrated on the owner's data before it may run.
    needs_calibration: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            DETECTORS.add(cls.name, cls)

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        """Learn what honest traffic looks like from the owner's natural rows (once, when
        the Shield is built); ``self.alpha`` is the false-positive budget to meet."""

    def calibration(self) -> dict[str, Any]:
        """The thresholds calibration set, for the start-up report."""
        return {}

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        raise NotImplementedError

    def reads(self, account: str, prediction: Prediction) -> list[Read]:
        """The state keys ``observe`` will read for this account and batch, so that a
        shared store can fetch them all in one round trip (others are read on demand)."""
        return []

    # A detector of language-model requests answers these instead (before generation).
    kind: ClassVar[str] = "classifier"

    def observe_request(self, account: str, req: LMRequest) -> Flag | None:
        """Watch one completion request of the account (language-model detectors)."""
        return None

    def request_reads(self, account: str) -> list[Read]:
        return []


@dataclass
class Volume(Detector):
    """Rows per account beyond what a benign customer sends (every row, repeats too).

    Its threshold is the owner's business figure (the heaviest customers' volume), not
    something natural rows can tell; ``modelshield calibrate --from-audit-log`` prints the
    past accounts' volumes to set it from."""

    name: ClassVar[str] = "volume"
    max_rows: int = 5000
    sees: ClassVar[str] = "all"
    needs_calibration: ClassVar[bool] = False

    def reads(self, account: str, prediction: Prediction) -> list[Read]:
        return [("hash", f"volume:{account}")]

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        rows = self.state.incr(f"volume:{account}", "rows", len(inputs))
        score = rows / self.max_rows
        return Flag(self.name, score, f"{rows} rows sent") if score >= 1 else None

    def calibration(self) -> dict[str, Any]:
        return {"max_rows": self.max_rows}


LOOK_RATIO = 1.25


def look_alpha(alpha: float, first: int, before: int, after: int) -> float | None:
    """The false-positive budget of the look an account's count reaches between ``before``
    (exclusive) and ``after`` (inclusive), or None when it reaches none.

    Looks fall at ``ceil(first * 1.25**k)`` rows (k = 0, 1, ...); look k spends
    ``alpha * 6 / (pi^2 (k+1)^2)``, so all of an account's looks spend at most ``alpha``.
    A batch that crosses several checkpoints is one look, at the last of them.
    """
    if after < first:
        return None
    k_after = _look_index(first, after)
    if before >= first and _look_index(first, before) == k_after:
        return None
    return alpha * 6 / (math.pi ** 2 * (k_after + 1) ** 2)


def _look_index(first: int, n: int) -> int:
    k = max(0, int(math.log(n / first) / math.log(LOOK_RATIO)))
    while math.ceil(first * LOOK_RATIO ** (k + 1)) <= n:
        k += 1
    while k > 0 and math.ceil(first * LOOK_RATIO ** k) > n:
        k -= 1
    return k


def upper_rate(hits: int, n: int, confidence: float = 0.99) -> float:
    """The one-sided upper confidence bound of a rate (Clopper-Pearson)."""
    if n == 0:
        return 1.0
    return 1.0 if hits >= n else float(stats.beta.ppf(confidence, hits + 1, n - hits))


@dataclass
class RateTest(Detector):
    """A share of an account's distinct rows with some property, tested against what
    honest customers show: flagged when the share is at least ``factor`` times the
    highest honest rate (``baseline``) *and* the account's count is improbable under
    every honest archetype's null, within the look's false-positive budget
    (:func:`look_alpha`).

    Each archetype's null is a beta-binomial fitted to simulated accounts of it: one
    analyst's edits of one record are not independent draws, so accounts' rates spread
    wider than a binomial's, and the fit keeps that spread.
    """

    factor: float = 2.0
    baseline: float = 0.01
    nulls: list[tuple[float, float]] = field(default_factory=list, repr=False)
    what: ClassVar[str] = ""

    def reads(self, account: str, prediction: Prediction) -> list[Read]:
        return [("hash", f"{self.name}:{account}")]

    def _test(self, account: str, hits: int, total: int, detail: str = "") -> Flag | None:
        c = self.state.incr_many(f"{self.name}:{account}", {"hits": hits, "total": total})
        k, n = c["hits"], c["total"]
        budget = look_alpha(self.alpha, self.min_queries, n - total, n)
        if budget is None or k / n < self.factor * self.baseline:
            return None
        p = self.p_value(k, n)
        if p > budget:
            return None
        score = min((k / n) / (self.factor * self.baseline),
                    np.log(max(p, 1e-300)) / np.log(budget))
        return Flag(self.name, score, f"{k} of {n} distinct queries {self.what} "
                    f"(honest: {self.baseline:.1%}; p = {p:.1e}){detail}")

    def p_value(self, k: int, n: int) -> float:
        """The chance an honest account of ``n`` distinct rows has ``k`` or more hits, under
        the least suspicious archetype (a binomial at ``baseline`` before calibration)."""
        if not self.nulls:
            return float(stats.binom.sf(k - 1, n, self.baseline))
        return max(float(stats.betabinom.sf(k - 1, n, a, b)) for a, b in self.nulls)

    def calibration(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "factor": self.factor, "alpha": self.alpha,
                "min_queries": self.min_queries}

    def _hits(self, rows: FloatArray, prediction: Prediction) -> np.ndarray:
        """Which of an account's distinct rows, in order, have the property counted."""
        raise NotImplementedError

    def _fit_honest(self, benign: FloatArray, predict: Any, floor: float = 0.005) -> None:
        """Fit the nulls and the baseline on honest customers simulated on ``benign``:
        i.i.d., narrow and what-if customers, 30 of each, volumes as customers send."""
        from modelshield.data.honest import honest_accounts

        labels = predict(benign).labels
        self.nulls, rates = [], [floor]
        for i, archetype in enumerate(("iid", "narrow", "what-if")):
            ks, ns = [], []
            for a in honest_accounts(benign, archetype, 30, seed=101 + i, labels=labels,
                                     median_rows=100):
                rows = seen_rows(np.concatenate(a.requests), self.sees)
                if len(rows) == 0:
                    continue
                h = self._hits(rows, predict(rows))
                ks.append(int(h.sum()))
                ns.append(len(h))
            mean, a_, b_ = beta_binomial_fit(np.asarray(ks), np.asarray(ns), floor)
            rates.append(mean)
            self.nulls.append((a_, b_))
        self.baseline = max(rates)


def beta_binomial_fit(k: np.ndarray, n: np.ndarray, floor: float = 0.005
                      ) -> tuple[float, float, float]:
    """(mean, a, b) of a beta-binomial fitted by moments to accounts' counts ``k`` of ``n``.

    The mean is the pooled rate's 99% upper bound (at least ``floor``); the spread is the
    intra-account correlation rho estimated from the accounts' rates (at least 0.001).
    """
    mean = max(floor, upper_rate(int(k.sum()), int(n.sum())))
    keep = n > 0
    k, n = k[keep], n[keep]
    rho = 1e-3
    if len(n) >= 3:
        p = k / n
        pooled = k.sum() / n.sum()
        # E[n_j (p_j - mu)^2] = mu (1 - mu) (1 + (n_j - 1) rho) under the beta-binomial
        spread = float(np.sum(n * (p - pooled) ** 2) / (len(n) - 1))
        binom = pooled * (1 - pooled)
        nbar = float(n.mean())
        if binom > 0 and nbar > 1:
            rho = float(np.clip((spread / binom - 1) / (nbar - 1), 1e-3, 0.99))
    scale = (1 - rho) / rho
    return mean, mean * scale, (1 - mean) * scale


def _distinct(rows: FloatArray) -> FloatArray:
    """The distinct rows, in the order first sent."""
    _, first = np.unique(rows, axis=0, return_index=True)
    return rows[np.sort(first)]


def seen_rows(rows: FloatArray, sees: str) -> FloatArray:
    """What a detector that ``sees`` "all", "fresh" or "records" gets of one account's
    whole stream (the simulations of calibration use it)."""
    if sees == "all":
        return rows
    rows = _distinct(rows)
    if sees == "fresh":
        return rows
    return np.asarray(rows[~edit_mask(np.empty((0, rows.shape[1])), rows)])


EDIT_WINDOW, EDIT_FEATURES = 64, 2


def edit_mask(recent: FloatArray, rows: FloatArray, window: int = EDIT_WINDOW,
              max_changed: int = EDIT_FEATURES) -> np.ndarray:
    """Which of ``rows`` are edits: differ from one of the ``window`` rows before them in
    at most ``max_changed`` features (a what-if user's change of a field or two). The
    rate tests and PRADA count records, not edits: an analyst who edits one borderline
    record fifty ways has sent one borderline record. recent: (h, d), oldest first."""
    k = len(rows)
    if k == 0:
        return np.zeros(0, dtype=bool)
    recent, rows = (np.where(np.isnan(a), -1e9, a) for a in (recent, rows))
    out = np.zeros(k, dtype=bool)
    for start in range(0, k, 64):  # bounded memory: (64, window, d) at a time
        before = np.concatenate([recent[-window:], rows[max(0, start - window) : start]])
        block = rows[start : start + 64]
        prev, valid = predecessors(before, block, window)
        changed = np.count_nonzero(np.abs(prev - block[:, None, :]) > 1e-12, axis=2)
        out[start : start + 64] = ((changed <= max_changed) & valid).any(axis=1)
    return out


def predecessors(recent: FloatArray, rows: FloatArray, window: int
                 ) -> tuple[FloatArray, np.ndarray]:
    """Each row's ``window`` predecessors in the stream ``recent`` then ``rows``: a
    (k, window, d) array, and which of them exist (k, window). A lone row's are the last
    rows of ``recent``, a view (the common case: one row a request)."""
    h, k = len(recent), len(rows)
    if k == 1:
        prev = recent[max(0, h - window):]
        return prev[None], np.ones((1, len(prev)), dtype=bool)
    allrows = np.concatenate([recent, rows])
    idx = (h + np.arange(k))[:, None] - window + np.arange(window)[None, :]
    return allrows[np.maximum(idx, 0)], idx >= 0


@dataclass
class Sweep(RateTest):
    """Line searches (:func:`line_search_hits`): a query at the midpoint of two of the
    account's recent queries on one line, as bisection asks at every step (path finding
    and Lowd-Meek find where an answer changes so), or a recent query with one feature
    moved beyond the natural data's range (the edge probes path finding starts from).
    An analyst's what-if edits of their own records step outwards through a grid or jump
    to other records' values; the few that land on a midpoint set the baseline, measured
    on simulated what-if, narrow and i.i.d. customers built from the owner's data."""

    name: ClassVar[str] = "sweep"
    sees: ClassVar[str] = "fresh"  # a line search is edits of recent rows
    what: ClassVar[str] = "continue a line search (bisection midpoints, edge probes)"
    window: int = 64
    block: int = 64
    factor: float = 3.0
    lo: FloatArray | None = None
    hi: FloatArray | None = None

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        self.lo, self.hi = benign.min(axis=0), benign.max(axis=0)
        self._fit_honest(benign, predict)

    def _hits(self, rows: FloatArray, prediction: Prediction) -> np.ndarray:
        return line_search_hits(np.empty((0, rows.shape[1])), rows, self.window, self.lo,
                                self.hi)

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        d = inputs.shape[1]
        recent = self.state.rows(f"sweep:{account}:recent", d)[-self.window:]
        rows = np.where(np.isnan(inputs), -1e9, inputs)
        hits = 0
        for start in range(0, len(rows), self.block):  # bounded memory for large batches
            block = rows[start : start + self.block]
            hits += int(line_search_hits(recent, block, self.window, self.lo, self.hi).sum())
            recent = np.concatenate([recent, block])[-self.window:]
        self.state.push(f"sweep:{account}:recent", rows[-self.window:], self.window)
        return self._test(account, hits, len(rows))

    def reads(self, account: str, prediction: Prediction) -> list[Read]:
        return [("rows", f"sweep:{account}:recent"), ("hash", f"sweep:{account}")]


def line_search_hits(recent: FloatArray, rows: FloatArray, window: int = 64,
                     lo: FloatArray | None = None, hi: FloatArray | None = None,
                     tol: float = 1e-6) -> np.ndarray:
    """Which of ``rows`` continue a line search, judged in order, all at once.

    recent: (h, d) the account's last queries, oldest first. A row is a hit when, among
    the ``window`` queries before it, it is (a) the midpoint (within 10%) of two on one
    line: a bisection step; or (b) one of them with exactly one feature moved beyond the
    natural data's range ``lo``/``hi`` of that feature: the probe of a box's edge that
    path finding and bisection start from.
    """
    k = len(rows)
    if k == 0:
        return np.zeros(0, dtype=bool)
    prev, valid = predecessors(recent, rows, window)  # (k, window, d), (k, window)
    diffs = prev - rows[:, None, :]
    # Opposite directions, from the Gram matrix of the differences (a batched matrix
    # product; its diagonal holds their squared lengths), then the rare candidate pairs'
    # distances: the midpoint test on those pairs only.
    gram = np.matmul(diffs, diffs.transpose(0, 2, 1))  # (k, window, window)
    norms = np.sqrt(np.diagonal(gram, axis1=1, axis2=2))
    valid &= norms > 0
    pairs = gram < (-1 + tol) * (norms[:, :, None] * norms[:, None, :])
    hit = np.zeros(k, dtype=bool)
    if pairs.any():
        row, a, b = np.nonzero(pairs)
        na, nb = norms[row, a], norms[row, b]
        keep = valid[row, a] & valid[row, b] & \
            (np.minimum(na, nb) / np.maximum(na + nb, 1e-300) > 0.45)
        hit[row[keep]] = True
    beyond = None if lo is None or hi is None else (rows < lo) | (rows > hi)  # (k, d)
    if beyond is not None and beyond.any():  # rows inside the natural range probe no edge
        moved = np.abs(diffs) > 1e-12  # (k, window, d)
        single = (moved.sum(axis=2) == 1) & valid
        hit |= (single & (moved & beyond[:, None, :]).any(axis=2)).any(axis=1)
    return np.asarray(hit)


@dataclass
class Boundary(RateTest):
    """A share of low-margin answers (top-two scores within ``margin``) well above the
    highest share honest traffic has: over the whole calibration data, each class, or
    the neighbourhood of a record (a narrow customer's part of the data)."""

    name: ClassVar[str] = "boundary"
    what: ClassVar[str] = "near the decision boundary"
    margin: float = 0.2
    baseline: float = 0.05

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        self._fit_honest(benign, predict, floor=0.01)

    def _hits(self, rows: FloatArray, prediction: Prediction) -> np.ndarray:
        return np.asarray(_margins(prediction) < self.margin)

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        return self._test(account, int(self._hits(inputs, prediction).sum()), len(inputs))

    def calibration(self) -> dict[str, Any]:
        return {**super().calibration(), "margin": self.margin}


@dataclass
class OutOfDistribution(RateTest):
    """A share of queries far from the natural data, well above the honest rate.

    "Far" is beyond the 99th percentile of natural points' distance to their nearest
    neighbour among ``size`` reference points (standardised features). The honest rate
    is measured on the half of the calibration data the reference was not drawn from:
    over all of it, each class, each neighbourhood, and what-if edits of its records (an
    edit that mixes fields can leave the data). The test decides how soon, not a fixed
    minimum count: ten far queries out of ten are flagged at once (an equation-solving
    batch of synthetic points), three out of ten are not.
    """

    name: ClassVar[str] = "ood"
    what: ClassVar[str] = "far from the natural data"
    min_queries: int = 10
    factor: float = 3.0
    size: int = 512
    reference: FloatArray | None = None
    radius: float = np.inf
    scale: FloatArray | None = None
    _ref_sq: FloatArray | None = field(default=None, repr=False)

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        self.scale = np.maximum(benign.std(axis=0), 1e-9)
        order = np.random.default_rng(0).permutation(len(benign))
        half = len(benign) // 2
        ref, held = benign[order[:half]], benign[order[half:]]
        self.reference = (ref / self.scale)[: self.size]
        self._ref_sq = (self.reference * self.reference).sum(1)
        dist = _nearest(held / self.scale, self.reference, self._ref_sq)
        self.radius = float(np.quantile(dist, 0.99))
        self._fit_honest(held, predict, floor=0.01)

    def _hits(self, rows: FloatArray, prediction: Prediction) -> np.ndarray:
        assert self.scale is not None and self.reference is not None
        return np.asarray(_nearest(rows / self.scale, self.reference, self._ref_sq) > self.radius)

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        if self.reference is None or self.scale is None:
            return None
        far = self._hits(np.where(np.isnan(inputs), 0.0, inputs), prediction)
        return self._test(account, int(far.sum()), len(inputs))

    def calibration(self) -> dict[str, Any]:
        return {**super().calibration(), "radius": self.radius}


@dataclass
class Prada(Detector):
    """PRADA (Juuti et al., EuroS&P 2019), per account.

    For each query, the distance to the nearest earlier query the model gave the same class
    (from a growing set per class) is recorded; benign streams give roughly normal
    distances, synthetic extraction queries do not. A Shapiro-Wilk statistic below
    ``delta`` flags the account. The reference implementation keeps one global state and
    tests after every query; we keep one state per account, keep the running mean and
    spread incrementally, and test every ``every`` new distances. Each class's growing set
    keeps its latest ``max_set`` rows: an account cannot grow the state without bound, and
    a request reads a bounded amount of it.

    ``delta`` is set from honest streams simulated on the owner's data (i.i.d., narrow,
    what-if and batch customers): the lowest W each stream reaches over its tests, put on
    a log scale, ``log(1 - W)``, fitted by a normal per archetype and cut at its
    ``1 - alpha`` quantile; ``delta`` is the lowest cut, at most 0.98 times the lowest W
    seen and never above the paper's 0.9. What-if analysts (a few records, each edited
    many ways) give far lower W than i.i.d. customers, so ``delta`` falls well below 0.9:
    PRADA then flags only streams less normal than theirs.
    """

    name: ClassVar[str] = "prada"
    delta: float = 0.9
    min_queries: int = 100
    every: int = 25
    max_set: int = 2000
    _streams: int = field(default=0, repr=False)  # how many simulated streams set delta

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        from modelshield.data.honest import honest_accounts

        labels = predict(benign).labels
        lowest: list[float] = []
        cuts = [self.delta]
        for i, archetype in enumerate(("iid", "narrow", "what-if", "batch")):
            ws = []
            for a in honest_accounts(benign, archetype, 15, seed=201 + i, labels=labels,
                                     median_rows=600):
                rows = seen_rows(np.concatenate(a.requests)[:3000], self.sees)
                if len(rows) < self.min_queries:
                    continue
                w = self._stream_min_w(rows, predict(rows).labels)
                if w is not None:
                    ws.append(w)
            lowest += ws
            if len(ws) >= 5:  # this archetype's lower tail, on a log scale
                u = np.log(np.maximum(1 - np.asarray(ws), 1e-12))
                cut = float(u.mean() + stats.norm.isf(self.alpha) * u.std(ddof=1))
                cuts.append(1 - float(np.exp(cut)))
        if len(lowest) < 10:
            raise ConfigError(
                f"prada: the calibration data ({len(benign)} rows) is too small to simulate "
                f"honest streams of {self.min_queries} distinct queries, which its test needs; "
                "give more rows of natural data, or leave prada out of the tier")
        self.delta = max(0.0, min(*cuts, 0.98 * min(lowest)))
        self._streams = len(lowest)

    def _stream_min_w(self, rows: FloatArray, labels: IntArray) -> float | None:
        probe = Prada(delta=self.delta, min_queries=10**9)
        probe.observe("calibration", rows, Prediction(np.eye(int(labels.max()) + 1)[labels]))
        d = probe.state.rows("prada:calibration:dist", 1).ravel()
        ws = [float(stats.shapiro(d[:n]).statistic)
              for n in range(self.min_queries, len(d) + 1, self.every) if np.ptp(d[:n]) > 0]
        return min(ws) if ws else None

    def calibration(self) -> dict[str, Any]:
        return {"delta": self.delta, "streams": self._streams, "alpha": self.alpha,
                "min_queries": self.min_queries}

    def reads(self, account: str, prediction: Prediction) -> list[Read]:
        key = f"prada:{account}"  # the distances are read only when the test runs
        reads: list[Read] = [("rows", f"{key}:g{c}") for c in set(prediction.labels.tolist())]
        return [*reads, ("value", f"{key}:moments"), ("value", f"{key}:last")]

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        key = f"prada:{account}"
        x = np.where(np.isnan(inputs), 0.0, inputs)
        labels = prediction.labels
        sets = {c: self.state.rows(f"{key}:g{c}", x.shape[1]) for c in set(labels.tolist())}
        moments = self.state.get(f"{key}:moments") or [0, 0.0, 0.0]  # Welford: n, mean, M2
        dists, added = prada_step(x, labels, sets, moments)
        new: dict[int, list[FloatArray]] = defaultdict(list)
        for i in added:
            new[int(labels[i])].append(x[i])
        for c, rows in new.items():
            self.state.push(f"{key}:g{c}", np.asarray(rows), self.max_set)
        if dists:
            self.state.push(f"{key}:dist", np.asarray(dists)[:, None], 1000)
        self.state.set(f"{key}:moments", moments)
        n, before = int(moments[0]), int(moments[0]) - len(dists)
        if n < self.min_queries:
            return None
        last = self.state.get(f"{key}:last")
        if last is not None and n // self.every == before // self.every:
            return None if last == "ok" else Flag(**last)
        w = float(stats.shapiro(self.state.rows(f"{key}:dist", 1).ravel()).statistic)
        flag = Flag(self.name, (1 - w) / (1 - self.delta),
                    f"Shapiro-Wilk W = {w:.3f} < {self.delta:.3f}") if w < self.delta else None
        self.state.set(f"{key}:last", "ok" if flag is None else flag.__dict__)
        return flag


def prada_step(x: FloatArray, labels: np.ndarray, sets: dict[int, FloatArray],
               moments: list[float]) -> tuple[list[float], list[int]]:
    """PRADA's pass over a batch, in order (Juuti et al. 2019, Alg. 1), vectorised.

    x: (k, d) queries; labels: (k,) the model's classes; sets: the growing set per class
    before the batch; moments: running [n, mean, M2] of the distances, updated in place.
    Each row's distance to its class's growing set is computed against the old set once,
    then lowered as rows of the batch join the set. Returns (new distances in order,
    indices of the rows that joined their growing set).
    """
    k = len(x)
    nearest = np.full(k, np.inf)
    empty = {c: len(g) == 0 for c, g in sets.items()}
    for c, g in sets.items():
        if len(g):
            idx = np.flatnonzero(labels == c)
            nearest[idx] = np.sqrt(((x[idx, None, :] - g[None, :, :]) ** 2).sum(axis=2).min(axis=1))
    dists: list[float] = []
    added: list[int] = []
    for i in range(k):
        c = int(labels[i])
        if empty[c]:  # the first query of a class starts its set
            empty[c] = False
            _join(x, labels, nearest, i)
            added.append(i)
            continue
        dist = float(nearest[i])
        if dist == 0.0:  # a repeated query tells nothing about the query distribution
            continue
        dists.append(dist)
        moments[0] += 1
        delta = dist - moments[1]
        moments[1] += delta / moments[0]
        moments[2] += delta * (dist - moments[1])
        if dist > moments[1] - np.sqrt(moments[2] / moments[0]):
            _join(x, labels, nearest, i)
            added.append(i)
    return dists, added


def _join(x: FloatArray, labels: np.ndarray, nearest: FloatArray, i: int) -> None:
    """Row i joins its class's set: later rows of that class may now be nearer to it."""
    later = i + 1 + np.flatnonzero(labels[i + 1 :] == labels[i])
    if len(later):
        nearest[later] = np.minimum(nearest[later],
                                    np.sqrt(((x[later] - x[i]) ** 2).sum(axis=1)))


MAX_SEEN = 20_000


def _row_digests(x: FloatArray) -> tuple[list[str], dict[str, int]]:
    """Each row's digest, and how many times each digest comes in the batch."""
    digests = [hashlib.blake2b(r.tobytes(), digest_size=8).hexdigest()
               for r in np.ascontiguousarray(x, dtype=np.float64)]
    amounts: dict[str, int] = {}
    for dig in digests:
        amounts[dig] = amounts.get(dig, 0) + 1
    return digests, amounts


def seen_read(ident: str, inputs: FloatArray) -> Read:
    """The read that counts ``inputs`` into ``ident``'s record of what it sent, with a
    batch's other reads: :func:`fresh_rows` of the same rows in that batch then makes no
    round trip of its own."""
    return ("count", f"seen:{ident}", tuple(_row_digests(inputs)[1].items()))


def fresh_rows(state: DetectorState, ident: str, inputs: FloatArray,
               max_seen: int = MAX_SEEN) -> np.ndarray:
    """Which rows of the batch ``ident`` has not sent before (a row repeated within the
    batch counts once, at its first place). The rate tests and PRADA count distinct
    rows: a customer who scores the same records every day is not sending new evidence.
    An account's record of what it sent holds about ``max_seen`` row digests; past that,
    every row counts as new."""
    x = np.ascontiguousarray(inputs, dtype=np.float64)
    digests, amounts = _row_digests(x)
    counts, before = state.count_new(f"seen:{ident}", amounts)  # one step, one round trip
    if before >= max_seen:
        return np.ones(len(x), dtype=bool)
    new = {dig for dig, n in amounts.items() if counts[dig] == n}
    fresh = np.zeros(len(x), dtype=bool)
    for i, dig in enumerate(digests):
        if dig in new:
            fresh[i] = True
            new.discard(dig)
    return fresh


def record_rows(state: DetectorState, ident: str, fresh: FloatArray) -> np.ndarray:
    """Which of an account's fresh rows are records, not edits of its recent rows
    (:func:`edit_mask`); the account's last rows are kept for the next batch."""
    d = fresh.shape[1]
    recent = state.rows(f"recent:{ident}", d)[-EDIT_WINDOW:]
    mask = ~edit_mask(recent, fresh)
    if len(fresh):
        state.push(f"recent:{ident}", fresh[-EDIT_WINDOW:], EDIT_WINDOW)
    return mask


DetectorSpec = str | dict[str, Any]
"""A detector in a config: its name, or ``{name: {parameter: value}}``."""


@dataclass
class Probing(Detector):
    """Logit-bias sweeps and single-token probing: the query patterns of logit and
    projection stealing (Carlini et al., ICML 2024; Finlayson et al., COLM 2024).

    It counts prompts, not requests: an attack that packs 64 prompts into one request is 64
    probes. A sweep is flagged once the account has biased ``distinct_bias_tokens`` distinct
    tokens over at least ``min_requests`` requests, with at least ``bias_novelty`` of its
    bias entries naming a token it had not biased before: an application that sends one
    fixed ban list again and again has a share that falls towards 0; a sweep keeps it near
    1. Single-token probing is flagged at ``single_token_prompts`` one-token prompts with
    logprobs, when they are 90% of the account's prompts. Logit harvesting is flagged once
    the account has asked for as many logprobs as ``logit_vectors`` full logit vectors hold
    (``logit_vectors`` times the vocabulary): it counts logit vectors, positions times their
    width (the top logprobs and the sampled token's), however many tokens a request asks
    for, so two-token requests count twice what one-token requests do.
    """

    name: ClassVar[str] = "probing"
    kind: ClassVar[str] = "language-model"
    sees: ClassVar[str] = "all"
    needs_calibration: ClassVar[bool] = False
    distinct_bias_tokens: int = 64
    min_requests: int = 4
    bias_novelty: float = 0.5
    single_token_prompts: int = 200
    logit_vectors: int = 128
    vocab: int = field(default=0, init=False)  # the model's: the Shield sets it

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        return None  # it watches completion requests (observe_request)

    def request_reads(self, account: str) -> list[Read]:
        return [("hash", f"lmprobe:{account}")]

    def observe_request(self, account: str, req: LMRequest) -> Flag | None:
        prompts = len(req.prompts) * req.n
        amounts = {"requests": 1, "prompts": prompts, "bias_entries": len(req.logit_bias)}
        if req.logprobs is not None:
            width = req.logprobs + 1 if not self.vocab else min(req.logprobs + 1, self.vocab)
            amounts["entries"] = prompts * req.max_tokens * width
            if req.max_tokens <= 1:
                amounts["single"] = prompts
        counts = self.state.incr_many(f"lmprobe:{account}", amounts)
        new = 0
        if req.logit_bias:
            seen = self.state.incr_many(f"lmbias:{account}", {str(t): 1 for t in req.logit_bias})
            new = sum(1 for v in seen.values() if v == 1)
        distinct = self.state.incr(f"lmprobe:{account}", "bias_tokens", new)
        novelty = distinct / max(counts["bias_entries"], 1)
        if distinct >= self.distinct_bias_tokens and counts["requests"] >= self.min_requests \
                and novelty >= self.bias_novelty:
            return Flag(self.name, float(distinct),
                        f"logit bias on {distinct} distinct tokens over {counts['requests']} "
                        f"requests, {novelty:.0%} of entries new (a sweep)")
        single = counts.get("single", 0)
        if single >= self.single_token_prompts and single >= 0.9 * counts["prompts"]:
            return Flag(self.name, float(single), f"{single} of {counts['prompts']} prompts "
                        "ask one token's logprobs (single-token probing)")
        return self._harvest(counts.get("entries", 0), counts["requests"])

    def _harvest(self, entries: int, requests: int) -> Flag | None:
        """The logit-harvesting rule: logprob entries asked for, in full vectors."""
        if not self.vocab or entries < self.logit_vectors * self.vocab:
            return None
        vectors = entries / self.vocab
        return Flag(self.name, vectors, f"{entries} logprobs asked for over {requests} "
                    f"requests: as many as {vectors:.0f} full logit vectors (logit vectors "
                    "counted as positions times logprob width)")


def without_uncalibrated(build: Callable[[list[DetectorSpec]], T],
                         detectors: list[DetectorSpec]) -> tuple[T, list[dict[str, str]]]:
    """``build(detectors)``, leaving out each detector the calibration data cannot calibrate
    (prada on a few dozen rows; every test when there is no data at all). Returns what
    was built and what was left out, with the reason: an audit or a benchmark names them,
    where a gateway refuses to start."""
    detectors, left_out = list(detectors), list[dict[str, str]]()
    while True:
        try:
            return build(detectors), left_out
        except ConfigError as exc:
            names = [detector_spec(d)[0] for d in detectors]
            head = str(exc).split(":")[0]
            if head == "model.calibration":  # no data: the tests go one by one
                head = next((n for n in names if DETECTORS[n].needs_calibration), "")
            if head not in names:
                raise
            left_out.append({"detector": head, "reason": str(exc)})
            detectors = [d for d, n in zip(detectors, names, strict=True) if n != head]


def detector_spec(entry: DetectorSpec) -> tuple[str, dict[str, Any]]:
    """(name, parameters) of a config entry; ConfigError names what is wrong."""
    params: Any
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        if not isinstance(params, dict):
            raise ConfigError(f"detector {name!r}: parameters must be a mapping, "
                              f"e.g. {{{name}: {{...}}}}")
    else:
        raise ConfigError("a detector is a name, or one name mapped to its parameters "
                          "(e.g. {volume: {max_rows: 800}})")
    if name not in DETECTORS:
        raise ConfigError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    tunable = tunable_parameters(name)
    for key, value in params.items():
        if key not in tunable:
            raise ConfigError(f"detector {name!r}: unknown parameter {key!r}; choose from "
                              f"{', '.join(sorted(tunable)) or 'none'}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or \
                (isinstance(tunable[key], int) and not isinstance(value, int)):
            kind = "a whole number" if isinstance(tunable[key], int) else "a number"
            raise ConfigError(f"detector {name!r}: {key} must be {kind} >= 0; got {value!r}")
    return name, dict(params)


CALIBRATED = ("alpha", "baseline", "delta", "radius")
"""Settings calibration sets (alpha from the tier's fpr), so a config cannot."""


def tunable_parameters(name: str) -> dict[str, int | float]:
    """A detector's numeric settings and their defaults (what a config may set)."""
    out: dict[str, int | float] = {}
    for f in fields(DETECTORS[name]):
        if f.name in CALIBRATED:
            continue
        if f.init and not f.name.startswith("_") and isinstance(f.default, int | float) \
                and not isinstance(f.default, bool) and np.isfinite(f.default):
            out[f.name] = f.default
    return out


def make_detector(spec: DetectorSpec, *, state: DetectorState | None = None,
                  **params: Any) -> Detector:
    """A detector from its config entry, with ``params`` on top, keeping its state in
    ``state`` (its own memory if None). Unknown or bad parameters raise ConfigError."""
    name, configured = detector_spec(spec)
    name, merged = detector_spec({name: {**configured, **params}})
    if state is not None:
        merged["state"] = state
    return DETECTORS[name](**merged)


def _margins(prediction: Prediction) -> FloatArray:
    top2 = np.sort(prediction.probabilities, axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0])


def _nearest(x: FloatArray, ref: FloatArray, ref_sq: FloatArray | None = None) -> FloatArray:
    """Each row's Euclidean distance to its nearest reference row (``ref_sq``: the
    reference rows' squared norms, if already known)."""
    if ref_sq is None:
        ref_sq = (ref * ref).sum(1)
    d = (x * x).sum(1)[:, None] - 2 * x @ ref.T + ref_sq[None, :]
    return np.asarray(np.sqrt(np.maximum(d.min(axis=1), 0.0)))
