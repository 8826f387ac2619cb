"""The batched sweep detector judges each row exactly as a row-by-row walk would."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from modelshield.defenses.detectors import sweep_hits


def reference(recent: list[np.ndarray], steps: list[np.ndarray], rows: np.ndarray,
              window: int = 64) -> int:
    """The row-by-row definition."""
    hits = 0
    for row in rows:
        past = np.asarray(recent[-window:])
        if len(past):
            changed = np.count_nonzero(np.abs(past - row) > 1e-12, axis=1)
            if not np.any(changed == 0):
                near = np.asarray(recent[-8:][::-1]) - row
                dirs = near / np.linalg.norm(near, axis=1, keepdims=True)
                seen = np.asarray(steps[-window:])
                rep = len(seen) > 0 and bool(np.any(np.abs(dirs @ seen.T) > 1 - 1e-9))
                steps.append(dirs[0])
                hits += int(np.any(changed == 1) or rep)
        recent.append(row)
    return hits


@given(seed=st.integers(0, 10**6), n=st.integers(1, 90), split=st.integers(0, 90))
@settings(max_examples=60, deadline=None)
def test_batch_equals_row_by_row(seed: int, n: int, split: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 3, size=(6, 4)).astype(float)  # few values: repeats and 1-feature steps
    line = base[0] + np.outer(rng.integers(0, 4, 20), base[1] - base[0] + 0.5)
    pool = np.concatenate([base, line])
    stream = pool[rng.integers(0, len(pool), n)]
    split = min(split, n)
    expected = reference([], [], stream)
    recent, steps = np.empty((0, 4)), np.empty((0, 4))
    got = 0
    for part in (stream[:split], stream[split:]):
        if len(part):
            h, found = sweep_hits(recent, steps, part)
            got += int(h.sum())
            recent = np.concatenate([recent, part])[-64:]
            steps = np.concatenate([steps, found])[-64:]
    assert got == expected


@given(seed=st.integers(0, 10**6), n=st.integers(1, 90))
@settings(max_examples=40, deadline=None)
def test_one_row_at_a_time_equals_row_by_row(seed: int, n: int) -> None:
    """Single-row requests take a shorter path; it must judge as the definition does."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 3, size=(6, 4)).astype(float)
    line = base[0] + np.outer(rng.integers(0, 4, 20), base[1] - base[0] + 0.5)
    pool = np.concatenate([base, line])
    stream = pool[rng.integers(0, len(pool), n)]
    expected = reference([], [], stream)
    recent, steps = np.empty((0, 4)), np.empty((0, 4))
    got = 0
    for row in stream:
        h, found = sweep_hits(recent, steps, row[None, :])
        got += int(h.sum())
        recent = np.concatenate([recent, row[None, :]])[-64:]
        steps = np.concatenate([steps, found])[-64:]
    assert got == expected
