"""Honest customers as they behave: archetypes of traffic built from an owner's natural data.

A detector's false positives are only as honest as the customers it is measured on. Real
customers do not send i.i.d. samples of the test set; they send:

``iid``
    Samples of the natural data in requests of 1 to 10 rows; per-account volumes are
    log-normal (median 60 rows, sigma 1).
``narrow``
    The same, from one region of the data: one class, or the rows nearest one record
    (a customer who only scores one kind of case).
``what-if``
    An analyst with a few records of their own who edits one or two fields of each and
    asks again, one row at a time: values other records have, or a field stepped through
    a few evenly spaced values ("what if income were 40k, 50k, 60k?").
``batch``
    A whole table in one request (100 to 1,000 rows; the gateway's ``max_batch`` cuts it
    into requests of that size).
``repeat``
    A fixed portfolio of 20 to 100 records scored again every day, 3 to 10 days.
``burst``
    Like ``iid``, but its requests come in a few bursts of one minute each rather than
    spread over the day (what rate limits see; the detectors see the same rows).

Each account is an :class:`HonestAccount`: its requests, in order, and when each is sent
(seconds from the start). The streams are built from rows the caller gives: the owner's
natural data, kept apart from whatever a detector was calibrated on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from modelshield.answer import FloatArray, IntArray
from modelshield.errors import ConfigError

ARCHETYPES = ("iid", "narrow", "what-if", "batch", "repeat", "burst")
DAY = 86_400.0


@dataclass(frozen=True)
class HonestAccount:
    """One honest customer's traffic: ``requests`` (each a (k, d) array) sent at ``times``."""

    archetype: str
    requests: list[FloatArray]
    times: FloatArray

    @property
    def rows(self) -> int:
        return sum(len(r) for r in self.requests)

    def chunked(self, max_batch: int) -> HonestAccount:
        """The same traffic with every request cut to at most ``max_batch`` rows."""
        reqs, times = [], []
        for r, t in zip(self.requests, self.times, strict=True):
            for s in range(0, len(r), max_batch):
                reqs.append(r[s : s + max_batch])
                times.append(t)
        return HonestAccount(self.archetype, reqs, np.asarray(times))


def honest_accounts(X: FloatArray, archetype: str, accounts: int, *, seed: int = 0,
                    labels: IntArray | None = None, low: FloatArray | None = None,
                    high: FloatArray | None = None, integer: bool = False,
                    median_rows: int = 60) -> list[HonestAccount]:
    """``accounts`` honest customers of one archetype, built from the natural rows ``X``.

    labels: the model's classes of ``X``, so that a narrow customer can keep to one class
    (without them it keeps to one record's neighbourhood); low/high: the input domain,
    which what-if edits stay in (default: the range of ``X``); integer: round edits to
    whole numbers (pixel intensities, counts).
    """
    if archetype not in ARCHETYPES:
        raise ConfigError(f"unknown honest archetype {archetype!r}; choose from "
                          f"{', '.join(ARCHETYPES)}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) < 2:
        raise ConfigError("honest traffic needs at least 2 natural rows, as a 2-D array")
    rng = np.random.default_rng(seed)
    lo = X.min(axis=0) if low is None else np.asarray(low, dtype=np.float64)
    hi = X.max(axis=0) if high is None else np.asarray(high, dtype=np.float64)
    make = _MAKERS[archetype]
    out = []
    for _ in range(accounts):
        volume = int(np.clip(rng.lognormal(np.log(median_rows), 1.0), 5, 50 * median_rows))
        requests, times = make(_Ctx(X, labels, lo, hi, integer, rng), volume)
        out.append(HonestAccount(archetype, requests, np.asarray(times, dtype=np.float64)))
    return out


@dataclass
class _Ctx:
    X: FloatArray
    labels: IntArray | None
    low: FloatArray
    high: FloatArray
    integer: bool
    rng: np.random.Generator

    def small_batches(self, rows: FloatArray, volume: int) -> list[FloatArray]:
        """``volume`` rows drawn from ``rows`` in requests of 1 to 10."""
        out, sent = [], 0
        while sent < volume:
            b = min(int(self.rng.integers(1, 11)), volume - sent)
            out.append(rows[self.rng.integers(0, len(rows), b)])
            sent += b
        return out

    def clean(self, row: FloatArray) -> FloatArray:
        """An edited row put back in the domain (and on the integer grid)."""
        row = np.clip(row, self.low, self.high)
        return np.round(row) if self.integer else row

    def spread(self, n: int, days: float = 1.0) -> FloatArray:
        return np.sort(self.rng.uniform(0, days * DAY, n))


def _iid(c: _Ctx, volume: int) -> tuple[list[FloatArray], FloatArray]:
    reqs = c.small_batches(c.X, volume)
    return reqs, c.spread(len(reqs))


def _narrow(c: _Ctx, volume: int) -> tuple[list[FloatArray], FloatArray]:
    if c.labels is not None and c.rng.random() < 0.5:
        classes = np.unique(c.labels)
        region = c.X[c.labels == c.rng.choice(classes)]
    else:
        scale = np.maximum(c.X.std(axis=0), 1e-9)
        anchor = c.X[c.rng.integers(len(c.X))]
        dist = np.linalg.norm((c.X - anchor) / scale, axis=1)
        region = c.X[np.argsort(dist)[: max(2, len(c.X) // 10)]]
    reqs = c.small_batches(region, volume)
    return reqs, c.spread(len(reqs))


def _what_if(c: _Ctx, volume: int) -> tuple[list[FloatArray], FloatArray]:
    reqs: list[FloatArray] = []
    d = c.X.shape[1]
    varying = np.flatnonzero(c.X.std(axis=0) > 0)
    if len(varying) == 0:
        varying = np.arange(d)
    while sum(len(r) for r in reqs) < volume:
        record = c.X[c.rng.integers(len(c.X))].copy()
        reqs.append(record[None, :])
        for _ in range(int(c.rng.integers(3, 11))):
            if c.rng.random() < 0.3:  # step one field through a few evenly spaced values
                j = int(c.rng.choice(varying))
                a, b = np.quantile(c.X[:, j], [0.1, 0.9])
                for v in np.linspace(a, b, int(c.rng.integers(3, 9))):
                    edit = record.copy()
                    edit[j] = v
                    reqs.append(c.clean(edit)[None, :])
                continue
            edit = record.copy()
            for j in c.rng.choice(varying, size=min(len(varying), int(c.rng.integers(1, 3))),
                                  replace=False):
                edit[j] = c.X[c.rng.integers(len(c.X)), j]  # a value another record has
            reqs.append(c.clean(edit)[None, :])
    return reqs, c.spread(len(reqs))


def _batch(c: _Ctx, volume: int) -> tuple[list[FloatArray], FloatArray]:
    reqs = []
    for _ in range(int(c.rng.integers(1, 4))):
        size = int(c.rng.integers(100, 1001))
        idx = c.rng.permutation(len(c.X))[:size] if size <= len(c.X) else \
            c.rng.integers(0, len(c.X), size)
        reqs.append(c.X[idx])
    return reqs, c.spread(len(reqs), days=3)


def _repeat(c: _Ctx, volume: int) -> tuple[list[FloatArray], FloatArray]:
    size = int(c.rng.integers(20, 101))
    portfolio = c.X[c.rng.permutation(len(c.X))[:size]] if size <= len(c.X) else \
        c.X[c.rng.integers(0, len(c.X), size)]
    reqs, times = [], []
    for day in range(int(c.rng.integers(3, 11))):
        t = day * DAY + c.rng.uniform(0, 3600)
        for s in range(0, len(portfolio), 10):
            reqs.append(portfolio[s : s + 10])
            times.append(t + s)
    return reqs, np.asarray(times)


def _burst(c: _Ctx, volume: int) -> tuple[list[FloatArray], FloatArray]:
    reqs = c.small_batches(c.X, volume)
    starts = c.spread(int(c.rng.integers(1, 4)))
    times = starts[c.rng.integers(0, len(starts), len(reqs))] + c.rng.uniform(0, 60, len(reqs))
    return reqs, np.sort(times)


_MAKERS: dict[str, Callable[[_Ctx, int], tuple[list[FloatArray], FloatArray]]] = {
    "iid": _iid, "narrow": _narrow, "what-if": _what_if, "batch": _batch,
    "repeat": _repeat, "burst": _burst}
