"""PRADA's vectorised batch pass equals the row-by-row algorithm."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from modelshield.defenses.detectors import prada_step


def reference(x: np.ndarray, labels: np.ndarray, sets: dict[int, list[np.ndarray]],
              moments: list[float]) -> tuple[list[float], list[int]]:
    dists, added = [], []
    for i, (row, c) in enumerate(zip(x, labels, strict=True)):
        g = sets.setdefault(int(c), [])
        if not g:
            g.append(row)
            added.append(i)
            continue
        d = float(np.sqrt(np.min(np.sum((np.asarray(g) - row) ** 2, axis=1))))
        if d == 0.0:
            continue
        dists.append(d)
        moments[0] += 1
        delta = d - moments[1]
        moments[1] += delta / moments[0]
        moments[2] += delta * (d - moments[1])
        if d > moments[1] - np.sqrt(moments[2] / moments[0]):
            g.append(row)
            added.append(i)
    return dists, added


@given(seed=st.integers(0, 10**6), k=st.integers(1, 60), prior=st.integers(0, 10))
@settings(max_examples=60, deadline=None)
def test_batch_pass_equals_row_by_row(seed: int, k: int, prior: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(k, 3)).astype(float)  # small grid: repeats happen
    labels = rng.integers(0, 3, size=k)
    old = {c: rng.integers(0, 4, size=(prior if c else 0, 3)).astype(float) for c in range(3)}
    want_m: list[float] = [0, 0.0, 0.0]
    want = reference(x, labels, {c: list(g) for c, g in old.items()}, want_m)
    got_m: list[float] = [0, 0.0, 0.0]
    got = prada_step(x, labels, {c: old[c] for c in np.unique(labels).tolist()}, got_m)
    assert got[1] == want[1]
    np.testing.assert_allclose(got[0], want[0])
    np.testing.assert_allclose(got_m, want_m)
