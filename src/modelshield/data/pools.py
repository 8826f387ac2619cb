"""What an attacker's pool is made of: rows customers could send, and rows made from them.

A built-in pool may hold more than natural rows: the digits pool is its 449 images followed
by their eight one-pixel shifts (:func:`~modelshield.data.datasets.shift_augment`), rows
no customer sends and an out-of-distribution detector sees as far from the data. An
attacker with natural data sends the natural rows; the audit gives it those.

:func:`pool_parts` reads what a pool holds from the rows themselves (a pool is called
augmented only when its tail is exactly the shifts of its head), so an owner's pool, or a
built-in pool whose make-up changes, is described as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from modelshield.answer import FloatArray
from modelshield.data.datasets import shift_augment

PoolKind = Literal["natural", "augmented", "synthetic"]

SHIFTS = 9  # an image and its eight one-pixel shifts


@dataclass(frozen=True)
class PoolPart:
    """Rows ``start:stop`` of a pool, of one kind, and how they were made."""

    kind: PoolKind
    start: int
    stop: int
    how: str

    @property
    def rows(self) -> int:
        return self.stop - self.start


def pool_parts(pool: FloatArray, integer_features: bool = False) -> list[PoolPart]:
    """The parts of ``pool``: natural rows, then any augmented rows made from them."""
    n = len(pool)
    natural = _shifted_head(pool) if integer_features else None
    if natural is None:
        return [PoolPart("natural", 0, n, "rows of the task's own data")] if n else []
    return [PoolPart("natural", 0, natural, "images of the task's own data"),
            PoolPart("augmented", natural, n,
                     "their eight one-pixel shifts (zero fill): not rows customers send")]


def natural_rows(pool: FloatArray, integer_features: bool = False) -> FloatArray:
    """The rows of ``pool`` that customers could send (its natural part)."""
    parts = [p for p in pool_parts(pool, integer_features) if p.kind == "natural"]
    if not parts:
        return pool[:0]
    return np.concatenate([pool[p.start:p.stop] for p in parts])


def describe(parts: list[PoolPart]) -> str:
    """A pool's make-up in words, for the report."""
    return "; ".join(f"{p.rows:,} {p.kind} ({p.how})" for p in parts) or "no pool"


def _shifted_head(pool: FloatArray) -> int | None:
    """The length of the head whose shifts make up the rest of ``pool``, if they do."""
    n, width = pool.shape if pool.ndim == 2 else (0, 0)
    side = math.isqrt(width)
    if n == 0 or n % SHIFTS or side * side != width or side < 2:
        return None
    head = n // SHIFTS
    return head if np.array_equal(shift_augment(pool[:head], side), pool) else None
