"""The canary test of a language model (Carlini et al. 2019): for each secret canary in
its training text, whether greedy decoding or beam search recovers it, and its exposure
in bits where the API lets logprobs out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelshield.attacks.lm_privacy import canary_exposure, extract_secret, usable_logprobs
from modelshield.oracle.lm import LMOracle
from modelshield.victims.lm import CANARY_ALPHABET, Canary, LMVictim


@dataclass(frozen=True)
class CanaryExposure:
    """What logprobs tell of one canary: its exposure two ways, its rank among the
    references, the queries that cost, and whether beam search recovers it."""

    interpolation: float
    extrapolation: float
    rank: int
    queries: int
    beam: bool


@dataclass(frozen=True)
class CanaryRow:
    """One canary's result; ``exposure`` is None when the API gives no logprobs."""

    prefix: str
    repeats: int
    greedy: bool
    exposure: CanaryExposure | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prefix": self.prefix, "repeats": self.repeats,
                               "greedy": self.greedy}
        if self.exposure is not None:
            e = self.exposure
            row.update(interpolation=e.interpolation, extrapolation=e.extrapolation,
                       rank=e.rank, queries=e.queries, beam=e.beam)
        return row


@dataclass(frozen=True)
class CanaryRun:
    """Every canary's row, and the top logprobs the API gave (None: none)."""

    top_logprobs: int | None
    rows: list[CanaryRow]


def secret_bits(marks: Sequence[Canary]) -> float:
    """log2 of the number of candidates of the canaries' format."""
    return len(marks[0].secret.split()) * float(np.log2(len(CANARY_ALPHABET)))


def run_canaries(oracle: LMOracle, lm: LMVictim, marks: Sequence[Canary], *,
                 references: int = 1000, seed: int = 0,
                 on_canary: Callable[[], None] | None = None) -> CanaryRun:
    """Test each of ``marks`` (the canaries of ``lm``) through ``oracle``: greedy
    extraction always; with logprobs, the exposure among ``references`` random candidates
    and beam search. ``on_canary`` is called after each."""
    letters = [lm.encode(" " + a)[0] for a in CANARY_ALPHABET]
    k = usable_logprobs(oracle, lm.vocab, lm.encode(marks[0].prefix))
    rows = []
    for c in marks:
        rows.append(_one(oracle, lm, c, letters, k, references, seed))
        if on_canary is not None:
            on_canary()
    return CanaryRun(k, rows)


def _one(oracle: LMOracle, lm: LMVictim, c: Canary, letters: list[int], k: int | None,
         references: int, seed: int) -> CanaryRow:
    prefix = lm.encode(c.prefix)
    secret = [letters[CANARY_ALPHABET.index(x)] for x in c.secret.split()]
    greedy = extract_secret(oracle, prefix, len(secret), letters) == secret
    if k is None:
        return CanaryRow(c.prefix, c.repeats, greedy)
    e = canary_exposure(oracle, prefix, secret, letters, references=references, k=k, seed=seed)
    beam = extract_secret(oracle, prefix, len(secret), letters, method="beam", k=k) == secret
    return CanaryRow(c.prefix, c.repeats, greedy,
                     CanaryExposure(e.interpolation, e.extrapolation, e.rank, e.queries, beam))
