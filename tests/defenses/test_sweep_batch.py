"""The batched line-search and edit tests judge each row exactly as a row-by-row walk
would, however a stream is cut into requests."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from modelshield.defenses.detectors import edit_mask, line_search_hits

LO, HI = np.zeros(4), np.full(4, 3.0)


def reference_hits(rows: np.ndarray, window: int = 64) -> int:
    """The row-by-row definition: the midpoint of two earlier rows on a line, or one
    earlier row with one feature moved beyond [LO, HI]."""
    hits = 0
    for i, x in enumerate(rows):
        past = rows[max(0, i - window) : i]
        hit = False
        for a in past:
            moved = np.abs(a - x) > 1e-12
            if moved.sum() == 1 and ((x < LO) | (x > HI))[moved].any():
                hit = True
            for b in past:
                da, db = a - x, b - x
                na, nb = np.linalg.norm(da), np.linalg.norm(db)
                if na > 0 and nb > 0 and da @ db / (na * nb) < -1 + 1e-6 and \
                        min(na, nb) / (na + nb) > 0.45:
                    hit = True
        hits += hit
    return hits


def reference_edits(rows: np.ndarray, window: int = 64) -> int:
    return sum(any(np.count_nonzero(np.abs(a - x) > 1e-12) <= 2
                   for a in rows[max(0, i - window) : i]) for i, x in enumerate(rows))


def stream(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 3, size=(6, 4)).astype(float)  # few values: edits and midpoints
    line = base[0] + np.outer(rng.integers(-1, 5, 20) / 2, base[1] - base[0] + 0.5)
    pool = np.concatenate([base, line])
    return pool[rng.integers(0, len(pool), n)]


@given(seed=st.integers(0, 10**6), n=st.integers(1, 90), split=st.integers(0, 90))
@settings(max_examples=40, deadline=None)
def test_batch_equals_row_by_row(seed: int, n: int, split: int) -> None:
    rows = stream(seed, n)
    split = min(split, n)
    got_hits = got_edits = 0
    recent = np.empty((0, 4))
    for part in (rows[:split], rows[split:]):
        got_hits += int(line_search_hits(recent, part, 64, LO, HI).sum())
        got_edits += int(edit_mask(recent, part).sum())
        recent = np.concatenate([recent, part])[-64:]
    assert got_hits == reference_hits(rows)
    assert got_edits == reference_edits(rows)


def test_bisection_is_a_line_search_and_a_grid_of_values_is_not() -> None:
    x = np.array([0.5, 0.5, 0.5, 0.5])
    lo, hi = x.copy(), x.copy()
    hi[2] = 1.0
    bisection = [lo, hi]
    for _ in range(8):
        mid = (bisection[-1] + bisection[-2]) / 2
        bisection.append(mid)
    grid = [x.copy() for _ in range(8)]
    for i, g in enumerate(grid):
        g[2] = 0.1 * i
    b = line_search_hits(np.empty((0, 4)), np.asarray(bisection), 64, LO, HI)
    g = line_search_hits(np.empty((0, 4)), np.asarray(grid), 64, LO, HI)
    assert b[2:].all() and not g.any()


@given(seed=st.integers(0, 10**6), n=st.integers(1, 90))
@settings(max_examples=25, deadline=None)
def test_one_row_a_request_equals_row_by_row(seed: int, n: int) -> None:
    """A lone row's predecessors are a view of the recent rows (the one-row path)."""
    rows = stream(seed, n)
    rows[seed % n, seed % 4] = np.nan if seed % 3 == 0 else rows[seed % n, seed % 4]
    hits = edits = 0
    recent = np.empty((0, 4))
    for i in range(n):
        part = rows[i : i + 1]
        hits += int(line_search_hits(np.nan_to_num(recent, nan=-1e9),
                                     np.nan_to_num(part, nan=-1e9), 64, LO, HI).sum())
        edits += int(edit_mask(recent, part).sum())
        recent = np.concatenate([recent, part])[-64:]
    clean = np.nan_to_num(rows, nan=-1e9)
    assert hits == reference_hits(clean)
    assert edits == reference_edits(clean)
