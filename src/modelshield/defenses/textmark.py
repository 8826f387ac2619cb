"""A keyed watermark in generated text (Kirchenbauer et al., ICML 2023, "A Watermark for
Large Language Models"), and its detection.

At each step the previous token and the key choose a "green list", a share ``gamma`` of
the vocabulary; ``delta`` is added to the green tokens' logits before sampling, so the
text leans green without any token being forbidden. Detection counts green tokens: a text
written without the key is green at each scored token with probability ``gamma``.

Scoring counts each distinct (previous token, token) pair once, as Fernandez et al. (2023)
advise: a pair's colour is one draw of the key, so repeats (code, lists, loops of the
model) would otherwise inflate the count. Over distinct pairs, the colours of a text
written without the key are independent Bernoulli(gamma), and the binomial p-value is
exact; ``z`` is the usual normal score.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CACHE = 4096


class TextWatermark:
    """The green lists of one key over a vocabulary."""

    def __init__(self, key: str, vocab: int, gamma: float = 0.25, delta: float = 2.0) -> None:
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1); got {gamma}")
        self.key, self.vocab, self.gamma, self.delta = key.encode(), vocab, gamma, delta
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def green(self, prev: int) -> np.ndarray:
        """The green list after token ``prev``, as a boolean mask over the vocabulary."""
        hit = self._cache.get(prev)
        if hit is not None:
            self._cache.move_to_end(prev)
            return hit
        digest = hmac.new(self.key, b"kgw|" + int(prev).to_bytes(8, "little", signed=True),
                          hashlib.sha256).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        mask = rng.random(self.vocab) < self.gamma
        self._cache[prev] = mask
        if len(self._cache) > CACHE:
            self._cache.popitem(last=False)
        return mask

    def bias(self, logits: np.ndarray, prev: int) -> np.ndarray:
        """``logits`` with ``delta`` added to the green tokens."""
        return logits + self.delta * self.green(prev)[: len(logits)]

    def score(self, tokens: Sequence[int], context: Sequence[int] = ()) -> TextScore:
        """How green ``tokens`` are (``context``: the tokens before them, e.g. the prompt)."""
        seq = list(context) + list(tokens)
        start = max(len(context), 1)
        pairs = {(seq[i - 1], seq[i]) for i in range(start, len(seq))}
        return self.score_pairs(pairs)

    def score_pairs(self, pairs: Iterable[tuple[int, int]]) -> TextScore:
        pairs = set(pairs)
        green = sum(bool(self.green(a)[b]) for a, b in pairs if 0 <= b < self.vocab)
        return TextScore.of(len(pairs), green, self.gamma)


@dataclass(frozen=True)
class TextScore:
    scored: int  # distinct (previous token, token) pairs
    green: int
    gamma: float
    z: float
    p_value: float

    @classmethod
    def of(cls, n: int, green: int, gamma: float) -> TextScore:
        if n == 0:
            return cls(0, 0, gamma, 0.0, 1.0)
        z = (green - gamma * n) / math.sqrt(n * gamma * (1 - gamma))
        p = float(stats.binom.sf(green - 1, n, gamma)) if green else 1.0
        return cls(n, green, gamma, z, p)
