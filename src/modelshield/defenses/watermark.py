"""Serve-time watermark (DAWN, Szyller et al., ACM Multimedia 2021) and its hypothesis test.

For a keyed pseudo-random share of inputs (``rate``, default 0.5%), the answer names a
different class, with the scores permuted to match, so a clone trained on the answers
learns those wrong labels and can later be told apart from a model built without them.

* **Deterministic and robust.** The choice depends on a fingerprint of the input, not on
  the request: the input scaled to its domain, projected on a few keyed random directions
  and cut into cells of width ``cell``. The same input, and small perturbations of it that
  stay in its cell, get the same answer, so repeating a query or voting over jittered
  copies does not wash the watermark out for free.
* **Keyed per account.** An account's key is ``HMAC(secret, key_id)``: the cells it sees
  watermarked, and the wrong labels, are its own, so a clone points to the account whose
  answers built it. An account's watermark set is rebuilt from the audit log (its inputs)
  and the secret alone.

**The test** (:func:`label_test`). The wrong label of a watermarked input is drawn
uniformly from the classes other than the model's, by bits of the HMAC the selection did
not use. A suspect built without our answers is independent of the key, so on each
watermarked input where it disagrees with our model it names the watermark's label with
probability exactly 1/(k-1): the matches are Binomial(m, 1/(k-1)), and the p-value needs no
assumption about the suspect. With two classes the wrong label is forced; then the
account's inputs that were *not* watermarked are the control (:func:`control_test`): the
watermarked cells are a keyed random subset of all its cells, so under the null the
suspect's disagreements fall on them no more often than on the rest (a hypergeometric
tail). Either way, the p-value is exact; ``bench/watermark_dawn.py`` counts false claims
over independently trained models all the same.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

from modelshield.answer import ApiSpec, FloatArray, IntArray, Prediction

DEFAULT_RATE = 0.005
DEFAULT_CELL = 0.05
DEFAULT_PROJECTIONS = 4


class ServeWatermark:
    """DAWN's keyed choice of watermarked inputs and their labels, for one model.

    secret: the gateway's ``watermark_secret``; rate: the share of input cells watermarked;
    cell: the cell width along each projection, with inputs scaled to [0, 1] on their
    domain; projections: how many keyed directions the fingerprint uses (fewer: larger
    cells, more robust to jitter, coarser regions).
    """

    def __init__(self, secret: str, spec: ApiSpec, rate: float = DEFAULT_RATE,
                 cell: float = DEFAULT_CELL, projections: int = DEFAULT_PROJECTIONS) -> None:
        if not 0 < rate < 0.5:
            raise ValueError(f"rate must be in (0, 0.5); got {rate}")
        if spec.n_classes < 2:
            raise ValueError("a watermark needs at least two classes")
        self.secret = secret.encode()
        self.spec, self.rate, self.cell = spec, float(rate), float(cell)
        self.k = spec.n_classes
        seed = int.from_bytes(hmac.new(self.secret, b"dawn-projections", hashlib.sha256)
                              .digest()[:8], "big")
        rng = np.random.default_rng(seed)
        u = rng.standard_normal((projections, spec.n_features))
        self.directions = u / np.linalg.norm(u, axis=1, keepdims=True)
        self.offsets = rng.uniform(0, self.cell, size=projections)
        span = np.asarray(spec.high, dtype=np.float64) - np.asarray(spec.low, dtype=np.float64)
        self._low = np.asarray(spec.low, dtype=np.float64)
        self._span = np.where(span > 0, span, 1.0)

    def account_key(self, account: str) -> bytes:
        return hmac.new(self.secret, b"dawn-account|" + account.encode(), hashlib.sha256).digest()

    def fingerprints(self, x: FloatArray) -> list[bytes]:
        """One fingerprint per row: the input's cell in the keyed projections."""
        z = (np.asarray(x, dtype=np.float64) - self._low) / self._span
        z = np.where(np.isnan(z), 0.5, z)  # a missing feature: the middle of its range
        cells = np.floor((z @ self.directions.T + self.offsets) / self.cell).astype(np.int64)
        return [row.tobytes() for row in cells]

    def draws(self, account: str, x: FloatArray) -> tuple[np.ndarray, IntArray]:
        """(watermarked?, label offset in 1..k-1) for every row of ``x`` as ``account``."""
        key = self.account_key(account)
        chosen = np.zeros(len(x), dtype=bool)
        offset = np.ones(len(x), dtype=np.int64)
        limit = int(self.rate * 2**64)
        for i, fp in enumerate(self.fingerprints(x)):
            digest = hmac.new(key, fp, hashlib.sha256).digest()
            chosen[i] = int.from_bytes(digest[:8], "big") < limit
            offset[i] = 1 + int.from_bytes(digest[8:16], "big") % (self.k - 1)
        return chosen, offset

    def labels(self, offset: IntArray, model_labels: IntArray) -> IntArray:
        """The watermark's label of each row: uniform over the classes but the model's."""
        return np.asarray((np.asarray(model_labels) + offset) % self.k, dtype=np.int64)

    def apply(self, account: str, x: FloatArray, prediction: Prediction
              ) -> tuple[Prediction, int]:
        """``prediction`` with the account's watermarked rows relabelled (the scores of the
        model's class and the watermark's class swapped, so they stay consistent), and how
        many rows were."""
        chosen, offset = self.draws(account, x)
        if not chosen.any():
            return prediction, 0
        rows = np.flatnonzero(chosen)
        y = prediction.labels[rows]
        target = self.labels(offset[rows], y)
        probs = _swap(prediction.probabilities, rows, y, target)
        counts = None if prediction.node_counts is None else \
            _swap(prediction.node_counts, rows, y, target)
        return replace(prediction, probabilities=probs, node_counts=counts), len(rows)


def _swap(values: FloatArray, rows: np.ndarray, a: IntArray, b: IntArray) -> FloatArray:
    out = np.array(values, dtype=np.float64, copy=True)
    va, vb = out[rows, a].copy(), out[rows, b].copy()
    out[rows, a], out[rows, b] = vb, va
    return out


@dataclass(frozen=True)
class WatermarkSet:
    """An account's watermark inputs (one per cell), rebuilt from its logged queries, and
    the control: its other cells, for the two-class test."""

    account: str
    x: FloatArray  # watermarked inputs, one per cell
    model_labels: IntArray  # our model's own label of each
    labels: IntArray  # the label the account was answered (the watermark's)
    control_x: FloatArray
    control_model_labels: IntArray
    control_labels: IntArray  # the label the watermark would have given each control cell
    queries: int  # rows the account sent


def watermark_set(wm: ServeWatermark, account: str, queries: FloatArray, model: Any,
                  answered: IntArray | None = None, max_control: int = 2000,
                  seed: int = 0) -> WatermarkSet:
    """The account's watermark set from the rows it sent (the audit log) and the secret.

    model: our model (``predict(x) -> Prediction``), for its own labels of those rows.
    answered: the labels the account was given (the log's answers). A cell the key chooses
    now but whose logged answer is not the watermark's label (sent before the tier had a
    watermark, or under another rate) is left out of both sets.
    """
    x = np.asarray(queries, dtype=np.float64).reshape(-1, wm.spec.n_features)
    _, first = np.unique(np.array(wm.fingerprints(x), dtype=object), return_index=True)
    keep = np.sort(first)  # one row per cell: a cell is one draw of the key
    x = x[keep]
    chosen, offset = wm.draws(account, x)
    y = model.predict(x).labels if len(x) else np.zeros(0, dtype=np.int64)
    wm_labels = wm.labels(offset, y)
    if answered is not None:
        given = np.asarray(answered, dtype=np.int64)[keep]
        unused = chosen & (given != wm_labels)
        chosen &= ~unused
    else:
        unused = np.zeros(len(x), dtype=bool)
    rest = np.flatnonzero(~chosen & ~unused)
    if len(rest) > max_control:
        rest = np.sort(np.random.default_rng(seed).choice(rest, max_control, replace=False))
    return WatermarkSet(account, x[chosen], y[chosen], wm_labels[chosen], x[rest], y[rest],
                        wm_labels[rest], len(queries))


@dataclass(frozen=True)
class TestResult:
    """One hypothesis test of a suspect against one account's watermark."""

    test: str  # "label" or "control"
    p_value: float
    watermarks: int  # watermark inputs asked
    matches: int  # the suspect named the watermark's label
    disagreements: int  # the suspect disagreed with our model (label test)
    chance: float = 0.0  # the null rate of a match per disagreement (label test)
    control: int = 0  # control inputs asked (control test)
    control_matches: int = 0

    def summary(self) -> str:
        if self.test == "label":
            return (f"{self.matches} of the {self.disagreements} watermarked inputs where it "
                    f"disagrees with our model name the watermark's label (chance "
                    f"{self.chance:.3g} each)")
        return (f"the watermark's label on {self.matches} of {self.watermarks} watermarked "
                f"inputs, against {self.control_matches} of {self.control} other inputs")


def joint_set(sets: Sequence[WatermarkSet]) -> WatermarkSet:
    """Several accounts' watermark sets as one: for an attacker who spread its queries over
    those accounts, so that each holds a share of the marks. Each account's cells and labels
    are keyed apart, so a model built without any of their answers still matches at chance
    on the union, and :func:`label_test` and :func:`control_test` stay exact on it."""
    def cat(name: str) -> Any:
        return np.concatenate([getattr(s, name) for s in sets])

    return WatermarkSet("+".join(s.account for s in sets), cat("x"), cat("model_labels"),
                        cat("labels"), cat("control_x"), cat("control_model_labels"),
                        cat("control_labels"), sum(s.queries for s in sets))


def label_test(suspect_labels: IntArray, ws: WatermarkSet, k: int) -> TestResult:
    """Exact binomial test: of the watermarked inputs where the suspect disagrees with our
    model, how many name the watermark's label, against chance 1/(k-1)."""
    s = np.asarray(suspect_labels)
    disagree = s != ws.model_labels
    m, hits = int(disagree.sum()), int((s == ws.labels).sum())
    p = float(stats.binom.sf(hits - 1, m, 1.0 / (k - 1))) if m and hits else 1.0
    return TestResult("label", p, len(s), hits, m, chance=1.0 / (k - 1))


def control_test(suspect_labels: IntArray, suspect_control: IntArray,
                 ws: WatermarkSet) -> TestResult:
    """Exact hypergeometric test: the watermark's label shows up on the watermarked cells
    more often than on the account's other cells would allow, were the suspect blind to
    which cells the key chose."""
    a = np.asarray(suspect_labels) == ws.labels
    c = np.asarray(suspect_control) == ws.control_labels
    n_w, n_c = len(a), len(c)
    hits, total = int(a.sum()), int(a.sum() + c.sum())
    p = float(stats.hypergeom.sf(hits - 1, n_w + n_c, total, n_w)) if hits else 1.0
    disagree = int((np.asarray(suspect_labels) != ws.model_labels).sum())
    return TestResult("control", p, n_w, hits, disagree, control=n_c, control_matches=int(c.sum()))
