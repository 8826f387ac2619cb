"""Query-pattern detectors: each watches one account's stream and says when it looks like
extraction, with a score (>= 1 means flagged) and a reason.

State is kept per account in a :mod:`~modelshield.defenses.state` store: process memory, or
the Redis that holds the rate limits, so every replica sees the same account. Each detector
is calibrated on benign traffic when the Shield is built.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
from scipy import stats

from modelshield.answer import FloatArray, LMRequest, Prediction
from modelshield.defenses.state import DetectorState, MemoryState, Read
from modelshield.errors import ConfigError
from modelshield.registry import Registry

DETECTORS: Registry[type[Detector]] = Registry("detector")


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
    state: DetectorState = field(default_factory=MemoryState, repr=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            DETECTORS.add(cls.name, cls)

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        """Learn what benign traffic looks like (called once when the Shield is built)."""

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
    """Rows per account beyond what a benign customer sends."""

    name: ClassVar[str] = "volume"
    max_rows: int = 5000

    def reads(self, account: str, prediction: Prediction) -> list[Read]:
        return [("hash", f"volume:{account}")]

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        rows = self.state.incr(f"volume:{account}", "rows", len(inputs))
        score = rows / self.max_rows
        return Flag(self.name, score, f"{rows} rows sent") if score >= 1 else None


@dataclass
class Sweep(Detector):
    """Line searches: queries that change one feature of a recent query, or that step
    along the same direction as earlier steps (bisection on a line, as equation solving,
    path finding and Lowd-Meek do). Re-sending a recent query is not counted."""

    name: ClassVar[str] = "sweep"
    window: int = 64
    max_share: float = 0.2

    block: int = 64

    def reads(self, account: str, prediction: Prediction) -> list[Read]:
        return [("rows", f"sweep:{account}:recent"), ("rows", f"sweep:{account}:steps"),
                ("hash", f"sweep:{account}")]

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        d = inputs.shape[1]
        recent = self.state.rows(f"sweep:{account}:recent", d)[-self.window:]
        steps = self.state.rows(f"sweep:{account}:steps", d)[-self.window:]
        rows = np.where(np.isnan(inputs), -1e300, inputs)
        hits, new_steps = 0, []
        for start in range(0, len(rows), self.block):  # bounded memory for large batches
            block = rows[start : start + self.block]
            h, found = sweep_hits(recent, steps, block, self.window)
            hits += int(h.sum())
            new_steps.append(found)
            if start + self.block < len(rows):
                recent = np.concatenate([recent, block])[-self.window:]
                steps = np.concatenate([steps, found])[-self.window:]
        self.state.push(f"sweep:{account}:recent", rows[-self.window:], self.window)
        fresh = (new_steps[0] if len(new_steps) == 1 else np.concatenate(new_steps))[-self.window:]
        if len(fresh):
            self.state.push(f"sweep:{account}:steps", fresh, self.window)
        c = self.state.incr_many(f"sweep:{account}", {"hits": hits, "total": len(rows)})
        hits, total = c["hits"], c["total"]
        if total < self.min_queries:
            return None
        score = (hits / total) / self.max_share
        return Flag(self.name, score, f"{hits} of {total} queries continue a line search "
                    "(one feature changed, or a repeated step direction)") if score >= 1 else None


def sweep_hits(recent: FloatArray, steps: FloatArray, rows: FloatArray,
               window: int = 64, near: int = 8) -> tuple[np.ndarray, FloatArray]:
    """Which of ``rows`` continue a line search, judged in order, all at once.

    recent: (h, d) the account's last queries, oldest first; steps: (s, d) its last unit
    step directions, oldest first; rows: (k, d) the new queries. A row that repeats one of
    the ``window`` queries before it is no step. Otherwise it is a hit if it differs from
    one of them in exactly one feature, or if its direction to one of its ``near`` latest
    predecessors is (±) one of the ``window`` step directions before it; its direction to
    its latest predecessor then becomes a step. Returns (hits (k,), new steps (m, d)).
    """
    h, k = len(recent), len(rows)
    if k == 1:  # the common single-row request, without the batch machinery
        return _sweep_one(recent[-window:], steps[-window:], rows[0], near)
    allrows = np.concatenate([recent, rows])
    pos = h + np.arange(k)
    j = np.arange(h + k)
    win = (j[None, :] < pos[:, None]) & (j[None, :] >= pos[:, None] - window)
    changed = np.count_nonzero(np.abs(allrows[None, :, :] - rows[:, None, :]) > 1e-12, axis=2)
    repeat = ((changed == 0) & win).any(axis=1)
    one_feature = ((changed == 1) & win).any(axis=1)
    active = (pos > 0) & ~repeat
    idx = pos[:, None] - 1 - np.arange(near)[None, :]
    valid = idx >= 0
    diffs = allrows[np.maximum(idx, 0)] - rows[:, None, :]
    norms = np.linalg.norm(diffs, axis=2, keepdims=True)
    dirs = np.where(valid[:, :, None] & (norms > 0), diffs / np.where(norms > 0, norms, 1), 0.0)
    found = dirs[active, 0]
    everything = np.concatenate([steps, found])
    end = len(steps) + np.cumsum(active) - active  # steps visible to each row: [end-window, end)
    jj = np.arange(len(everything))
    visible = (jj[None, :] < end[:, None]) & (jj[None, :] >= end[:, None] - window)
    cos = np.abs(np.einsum("knd,sd->kns", dirs, everything)).max(axis=1)
    repeated = ((cos > 1 - 1e-9) & visible).any(axis=1)
    return active & (one_feature | repeated), found


def _sweep_one(recent: FloatArray, steps: FloatArray, row: FloatArray,
               near: int) -> tuple[np.ndarray, FloatArray]:
    """sweep_hits for one row (recent and steps already cut to the window)."""
    if len(recent) == 0:
        return _NO_HIT, np.empty((0, len(row)))
    changed = np.count_nonzero(np.abs(recent - row) > 1e-12, axis=1)
    if not changed.all():  # a repeat is no step
        return _NO_HIT, np.empty((0, len(row)))
    diffs = recent[: -near - 1 : -1] - row  # latest predecessor first
    dirs = diffs / np.sqrt(np.einsum("nd,nd->n", diffs, diffs))[:, None]
    hit = bool((changed == 1).any()) or (
        len(steps) > 0 and bool((np.abs(dirs @ steps.T) > 1 - 1e-9).any()))
    return np.array([hit]), dirs[:1]


_NO_HIT = np.zeros(1, dtype=bool)
_NO_HIT.flags.writeable = False


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

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        self.baseline = max(float(np.mean(_margins(predict(benign)) < self.margin)), 0.01)

    def reads(self, account: str, prediction: Prediction) -> list[Read]:
        return [("hash", f"boundary:{account}")]

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        c = self.state.incr_many(f"boundary:{account}", {
            "low": int(np.sum(_margins(prediction) < self.margin)), "total": len(inputs)})
        low, n = c["low"], c["total"]
        if n < self.min_queries:
            return None
        share, p0 = low / n, self.baseline
        z = (low - n * p0) / np.sqrt(n * p0 * (1 - p0))
        score = min(share / (self.factor * p0), z / self.z)
        return Flag(self.name, score, f"{share:.0%} of queries near the decision boundary "
                    f"(benign: {p0:.0%}, z = {z:.1f})") if score >= 1 else None


@dataclass
class OutOfDistribution(Detector):
    """A share of queries far from the natural data, well above the benign rate.

    "Far" is beyond the 99th percentile of benign points' distance to their nearest
    neighbour among ``size`` reference points (standardised features), so about 1% of
    benign queries are far. An account is flagged when at least ``max_share`` of its
    queries are far *and* a one-sided binomial test against the benign rate gives a
    p-value below ``alpha``. The test, not a fixed minimum count, decides how soon: ten
    far queries out of ten are flagged at once (an equation-solving batch of synthetic
    points), three out of ten are not.
    """

    name: ClassVar[str] = "ood"
    min_queries: int = 10
    max_share: float = 0.3
    alpha: float = 1e-6
    baseline: float = 0.01
    size: int = 512
    reference: FloatArray | None = None
    radius: float = np.inf
    scale: FloatArray | None = None
    _ref_sq: FloatArray | None = field(default=None, repr=False)

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        self.scale = np.maximum(benign.std(axis=0), 1e-9)
        ref = np.random.default_rng(0).permutation(benign / self.scale)[:2 * self.size]
        half = len(ref) // 2
        self.reference = ref[:half]
        self._ref_sq = (self.reference * self.reference).sum(1)
        self.radius = float(np.quantile(_nearest(ref[half:], self.reference, self._ref_sq),
                                        0.99))

    def reads(self, account: str, prediction: Prediction) -> list[Read]:
        return [("hash", f"ood:{account}")]

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        if self.reference is None or self.scale is None:
            return None
        x = np.where(np.isnan(inputs), 0.0, inputs) / self.scale
        n_far = int((_nearest(x, self.reference, self._ref_sq) > self.radius).sum())
        c = self.state.incr_many(f"ood:{account}", {"far": n_far, "total": len(inputs)})
        far, n = c["far"], c["total"]
        if n < self.min_queries or far / n < self.max_share:
            return None
        p = float(stats.binom.sf(far - 1, n, self.baseline))
        score = min((far / n) / self.max_share,
                    np.log(max(p, 1e-300)) / np.log(self.alpha))
        return Flag(self.name, score, f"{far} of {n} queries far from the natural data "
                    f"(benign: {self.baseline:.0%}, p = {p:.1e})") if score >= 1 else None


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
    """

    name: ClassVar[str] = "prada"
    delta: float = 0.9
    min_queries: int = 100
    every: int = 25
    max_set: int = 2000

    def calibrate(self, benign: FloatArray, predict: Any) -> None:
        """Lower ``delta`` below what benign streams reach: 20 shuffled benign streams of
        up to 300 rows each; delta becomes at most 0.98 x their lowest W."""
        rng = np.random.default_rng(0)
        labels = predict(benign).labels
        onehot = np.eye(int(labels.max()) + 1)
        lowest = 1.0
        for _ in range(20):
            order = rng.permutation(len(benign))[:300]
            probe = Prada(delta=self.delta, min_queries=10**9)
            probe.observe("calibration", benign[order], Prediction(onehot[labels[order]]))
            d = probe.state.rows("prada:calibration:dist", 1).ravel()
            if len(d) >= 20:
                lowest = min(lowest, float(stats.shapiro(d).statistic))
        self.delta = min(self.delta, 0.98 * lowest)

    def reads(self, account: str, prediction: Prediction) -> list[Read]:
        key = f"prada:{account}"  # the distances are read only when the test runs
        return [("rows", f"{key}:g{c}") for c in set(prediction.labels.tolist())] + [
            ("value", f"{key}:moments"), ("value", f"{key}:last")]

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
    logprobs, when they are 90% of the account's prompts.
    """

    name: ClassVar[str] = "probing"
    kind: ClassVar[str] = "language-model"
    distinct_bias_tokens: int = 64
    min_requests: int = 4
    bias_novelty: float = 0.5
    single_token_prompts: int = 200

    def observe(self, account: str, inputs: FloatArray, prediction: Prediction) -> Flag | None:
        return None  # it watches completion requests (observe_request)

    def request_reads(self, account: str) -> list[Read]:
        return [("hash", f"lmprobe:{account}")]

    def observe_request(self, account: str, req: LMRequest) -> Flag | None:
        prompts = len(req.prompts) * req.n
        amounts = {"requests": 1, "prompts": prompts, "bias_entries": len(req.logit_bias)}
        if req.max_tokens <= 1 and req.logprobs is not None:
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
        return None


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


def tunable_parameters(name: str) -> dict[str, int | float]:
    """A detector's numeric settings and their defaults (what a config may set)."""
    out: dict[str, int | float] = {}
    for f in fields(DETECTORS[name]):
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
