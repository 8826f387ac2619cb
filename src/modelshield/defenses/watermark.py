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

**On scores** (:func:`score_test`), for a suspect that gives every class's score: how far
it leans toward the watermark's label beyond our model, on the watermarked cells against
the account's other cells. A smooth student that keeps our label on the marked inputs
still leans there (``bench/watermark_scores.py``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import special, stats

from modelshield.answer import ApiSpec, FloatArray, IntArray, Prediction

DEFAULT_RATE = 0.005
DEFAULT_CELL = 0.05
DEFAULT_PROJECTIONS = 4
ODDS_FLOOR = 1e-9  # probabilities below it count as it in the score test's log-odds
SCORE_GRID = 8  # the score test's cut-offs: m, 2m, 4m, ... cells (at most this many)
MAX_CONTROL = 2000  # an account's unmarked cells kept as the control, at most


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

    def same_cell_copies(self, x: FloatArray, scale: float, rng: np.random.Generator,
                         rounds: int = 8) -> tuple[FloatArray, int]:
        """A moved copy of each row that stays in its cell, and how many rows found none.

        Each feature moves by Gaussian noise of ``scale`` times its range (clipped to the
        domain); a copy that leaves the cell is drawn again, at half the scale each round,
        and after ``rounds`` the row itself is kept. The noise does not depend on the key,
        so a test on the copies stays exact; and a suspect that looks its own training
        rows up does not find them."""
        x = np.asarray(x, dtype=np.float64)
        if scale <= 0 or len(x) == 0:
            return x.copy(), 0
        want = self.fingerprints(x)
        out = x.copy()
        todo = np.arange(len(x))
        high = np.asarray(self.spec.high, dtype=np.float64)
        span = high - self._low  # a constant feature (no range) does not move
        for r in range(rounds):
            moved = np.clip(x[todo] + rng.standard_normal((len(todo), x.shape[1]))
                            * span * scale / 2**r, self._low, high)
            same = np.array([f == want[i] for i, f in zip(todo, self.fingerprints(moved),
                                                          strict=True)], dtype=bool)
            out[todo[same]] = moved[same]
            todo = todo[~same]
            if len(todo) == 0:
                break
        return out, len(todo)

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
    # Our model's log-odds of the watermark's label against its own, per cell (score test).
    model_odds: FloatArray = field(default_factory=lambda: np.zeros(0))
    control_model_odds: FloatArray = field(default_factory=lambda: np.zeros(0))
    # (watermarked, control) cells of each account, in order: several for a joint set.
    strata: tuple[tuple[int, int], ...] = ()
    # The control holds every other cell the account sent (none cut by ``max_control``),
    # and each cell was marked with chance ``rate``: what :func:`sequential_p` needs.
    complete: bool = False
    rate: float = 0.0

    def parts(self) -> tuple[tuple[int, int], ...]:
        return self.strata or ((len(self.x), len(self.control_x)),)


def watermark_set(wm: ServeWatermark, account: str, queries: FloatArray, model: Any,
                  answered: IntArray | None = None, max_control: int = MAX_CONTROL,
                  seed: int = 0) -> WatermarkSet:
    """The account's watermark set from the rows it sent (the audit log) and the secret.

    model: our model (``predict(x) -> Prediction``), for its own labels of those rows.
    answered: the labels the account was given (the log's answers). A cell the key chooses
    now but whose logged answer is not the watermark's label (sent before the tier had a
    watermark, or under another rate) is left out of both sets.
    max_control: keep at most this many of the other cells as the control, drawn at random
    (``seed``) without looking at the suspect, so the tests stay exact; a smaller control
    asks the suspect less and gives the tests less to compare with. The draws are nested:
    the control kept with ``n`` holds the one kept with any smaller number.
    """
    x = np.asarray(queries, dtype=np.float64).reshape(-1, wm.spec.n_features)
    _, first = np.unique(np.array(wm.fingerprints(x), dtype=object), return_index=True)
    keep = np.sort(first)  # one row per cell: a cell is one draw of the key
    x = x[keep]
    chosen, offset = wm.draws(account, x)
    probs = model.predict(x).probabilities if len(x) else np.zeros((0, wm.k))
    y = np.asarray(np.argmax(probs, axis=1), dtype=np.int64)
    wm_labels = wm.labels(offset, y)
    odds = log_odds(probs, wm_labels, y)
    if answered is not None:
        given = np.asarray(answered, dtype=np.int64)[keep]
        unused = chosen & (given != wm_labels)
        chosen &= ~unused
    else:
        unused = np.zeros(len(x), dtype=bool)
    rest = np.flatnonzero(~chosen & ~unused)
    complete = len(rest) <= max_control
    if not complete:
        rest = np.sort(np.random.default_rng(seed).permutation(rest)[:max_control])
    return WatermarkSet(account, x[chosen], y[chosen], wm_labels[chosen], x[rest], y[rest],
                        wm_labels[rest], len(queries), odds[chosen], odds[rest],
                        complete=complete, rate=wm.rate)


def log_odds(probabilities: FloatArray, a: IntArray, b: IntArray) -> FloatArray:
    """Per row, log p(a) - log p(b), the probabilities clipped at ``ODDS_FLOOR``."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), ODDS_FLOOR, 1.0)
    if p.size == 0:
        return np.zeros(len(p))
    rows = np.arange(len(p))
    return np.asarray(np.log(p[rows, a]) - np.log(p[rows, b]), dtype=np.float64)


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
    # The sequential test (:func:`sequential_p`), valid when the account's queries depend
    # on the answers it got; None where the suspect was not asked every cell.
    p_sequential: float | None = None

    def summary(self) -> str:
        if self.test == "score":
            return (f"{self.matches} of the {self.watermarks} watermarked inputs among the "
                    f"{self.matches + self.control_matches} of {self.watermarks + self.control} "
                    "where it leans furthest, beyond our model, toward the watermark's label")
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
                        cat("control_labels"), sum(s.queries for s in sets), cat("model_odds"),
                        cat("control_model_odds"), tuple(p for s in sets for p in s.parts()),
                        complete=all(s.complete for s in sets),
                        rate=sets[0].rate if len({s.rate for s in sets}) == 1 else 0.0)


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
    which cells the key chose (per account, for a joint set: :func:`strata_tail`)."""
    a = np.asarray(suspect_labels) == ws.labels
    c = np.asarray(suspect_control) == ws.control_labels
    hits = int(a.sum())
    p = strata_tail(ws.parts(), a, c, hits) if hits else 1.0
    disagree = int((np.asarray(suspect_labels) != ws.model_labels).sum())
    return TestResult("control", p, len(a), hits, disagree, control=len(c),
                      control_matches=int(c.sum()))


def strata_tail(parts: Sequence[tuple[int, int]], in_w: np.ndarray, in_c: np.ndarray,
                hits: int) -> float:
    """P(at least ``hits`` watermarked cells in a set T of cells) when each account's
    watermarked cells are a uniformly random subset of its cells: a sum of independent
    hypergeometric counts, one per account. in_w, in_c: which watermarked and control cells
    are in T, concatenated by account as ``parts`` (watermarked, control) says."""
    pmf = np.ones(1)
    at_w = at_c = 0
    for m, n_c in parts:
        t = int(in_w[at_w:at_w + m].sum() + in_c[at_c:at_c + n_c].sum())
        at_w, at_c = at_w + m, at_c + n_c
        pmf = np.convolve(pmf, stats.hypergeom.pmf(np.arange(min(m, t) + 1), m + n_c, t, m))
    return float(min(1.0, pmf[hits:].sum()))


# sequential_p's cells: leaning this far (log-odds), or more, beyond our model; and its bets
# on a mark in each of them. A student less sure than our model leans by several units on
# every cell (the digits MLP's knockoff clones: a median of 1.2 and a 99th percentile of 9
# on the unmarked cells, most marks 8 to 30), so the cuts reach 16. Chosen among six
# grids, the one before (shifts to 4, bets to 0.8) included, on the thieves' seeds 3-5:
# bench/watermark_sequential_tune.py.
SEQ_SHIFTS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0)
SEQ_BETS = (0.05, 0.1, 0.2, 0.4, 0.8, 0.95)


def sequential_p(cuts: Sequence[tuple[np.ndarray, np.ndarray]], rate: float,
                 bets: Sequence[float] = SEQ_BETS) -> float:
    """A p-value that holds whatever the account's queries depended on: 1 / the e-value
    of :func:`sequential_log_e`, at most 1 (Ville's inequality)."""
    return float(min(1.0, np.exp(-sequential_log_e(cuts, rate, bets))))


def sequential_log_e(cuts: Sequence[tuple[np.ndarray, np.ndarray]], rate: float,
                     bets: Sequence[float] = SEQ_BETS) -> float:
    """The log of an e-value against the null that the suspect is blind to the marks.

    Each cell's mark is a fresh keyed draw, made with chance ``rate`` when the account first
    sends an input in it. Its answer comes after, so nothing the account knew when it chose
    that input, and nothing a suspect built without its answers says there, depends on it.
    For a set of cells picked by the suspect's answer in each (``cuts``: the watermarked
    cells in it, the other cells in it), betting a share ``nu`` of the wealth on a mark in
    each multiplies it by ``1 + nu (1 - rate) / rate`` at a mark and by ``1 - nu`` at any
    other cell: a nonnegative martingale of mean 1 under the null, in the order the cells
    were first sent, so their product at the end is an e-value whatever that order was.
    The mean over the cuts and the bets (each in [0, 1)) is one too. It needs every cell the
    account sent, marked or not (a control cut to fewer would over-weight the marks), and
    the marks' chance: with neither, 0 (e = 1).
    """
    if not all(0 <= nu < 1 for nu in bets) or not bets:
        raise ValueError(f"bets: each a share of the wealth in [0, 1), got {list(bets)}")
    if not 0 < rate < 1 or not cuts:
        return 0.0
    logs = []
    for in_w, in_c in cuts:
        h = int(np.sum(in_w))
        n = h + int(np.sum(in_c))
        for nu in bets:
            logs.append(h * np.log1p(nu * (1 - rate) / rate) + (n - h) * np.log1p(-nu))
    return float(special.logsumexp(logs) - np.log(len(logs)))


def sequential_cuts(suspect_w: Any, suspect_c: Any, ws: WatermarkSet, scores: bool,
                    shifts: Sequence[float] = SEQ_SHIFTS) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cells :func:`sequential_p` bets on, each picked by the suspect's answer there
    alone: where it names the watermark's label, and (with scores) where it leans at least
    each of ``shifts`` beyond our model toward it. suspect_w, suspect_c: its labels,
    or (``scores``) every class's score, on the watermarked cells and on the others."""
    if not scores:
        return [(np.asarray(suspect_w) == ws.labels, np.asarray(suspect_c) == ws.control_labels)]
    r_w, r_c = leans(suspect_w, suspect_c, ws)
    cuts = [(np.argmax(suspect_w, axis=1) == ws.labels,
             np.argmax(suspect_c, axis=1) == ws.control_labels)]
    return cuts + [(r_w >= c, r_c >= c) for c in shifts]


def leans(suspect_w: FloatArray, suspect_c: FloatArray, ws: WatermarkSet
          ) -> tuple[FloatArray, FloatArray]:
    """How far a suspect's scores lean toward the watermark's label beyond our model, on
    the watermarked cells and on the others: its log-odds of that label against our
    model's, minus our model's own (what both score tests read)."""
    r_w = log_odds(np.asarray(suspect_w, dtype=np.float64), ws.labels, ws.model_labels) \
        - ws.model_odds
    r_c = log_odds(np.asarray(suspect_c, dtype=np.float64), ws.control_labels,
                   ws.control_model_labels) - ws.control_model_odds
    return r_w, r_c


def score_test(suspect_probabilities: FloatArray, suspect_control: FloatArray,
               ws: WatermarkSet) -> TestResult:
    """Exact test on a suspect's scores: do the watermarked cells lean toward the
    watermark's label, beyond what our model does there, more than the account's other
    cells lean toward the label the watermark would have given them?

    Each cell's statistic is the suspect's log-odds of the watermark's label against our
    model's label, minus our model's own. A student trained on our answers copies our
    model's scores on ordinary cells (about 0) and moves toward the swapped scores on the
    watermarked ones, even where it is too smooth to change its top label. For a suspect
    built without the account's answers, the statistics do not depend on which cells the
    key chose (the choice and the labels are independent bits of the HMAC), so the
    watermarked cells are a uniformly random subset of the cells given the statistics: the
    count among the top ``q`` is hypergeometric (per account: :func:`strata_tail`). The
    sets tested: the cells where it names the watermark's label (the control test's), and
    the top ``q`` for q = m, 2m, 4m, ... (``SCORE_GRID`` at most); the smallest tail is
    multiplied by their number. Ties at a cut-off are all counted in, so the p-value is
    exact or conservative. Like the control test, it is exact when the account's choice
    of queries does not depend on the answers it got.
    """
    r_w, r_c = leans(suspect_probabilities, suspect_control, ws)
    m, n = len(r_w), len(r_w) + len(r_c)
    top_w = np.argmax(suspect_probabilities, axis=1)
    named_w = top_w == ws.labels
    if m == 0 or n == m:
        return TestResult("score", 1.0, m, int(named_w.sum()), 0, control=n - m)
    named_c = np.argmax(suspect_control, axis=1) == ws.control_labels
    everything = np.sort(np.concatenate([r_w, r_c]))[::-1]
    cuts = [(named_w, named_c)]  # where it names the watermark's label, as the control test
    q = m
    while q < n and len(cuts) <= SCORE_GRID:
        t = everything[q - 1]
        cuts.append((r_w >= t, r_c >= t))
        q *= 2
    best = (2.0, 0, 0)
    for in_w, in_c in cuts:
        hits = int(in_w.sum())
        p = strata_tail(ws.parts(), in_w, in_c, hits) if hits else 1.0
        if p < best[0]:
            best = (p, hits, hits + int(in_c.sum()))
    p, hits, top = best
    disagree = int((top_w != ws.model_labels).sum())
    return TestResult("score", min(1.0, p * len(cuts)), m, hits, disagree, control=n - m,
                      control_matches=top - hits)
