"""What a completions API tells about a language model's training text.

- **Canary exposure** (Carlini et al., USENIX Security 2019, "The Secret Sharer"): a secret
  of a known format (a prefix, then ``length`` symbols of an alphabet) was put in the
  training data some number of times. Its exposure is ``log2 |R| - log2 rank``, the rank
  of the secret's log-likelihood among the ``|R|`` candidates of the format. Like
  TF-Privacy's ``secret_sharer``, it is estimated from a sample of reference candidates,
  by *interpolation* (the rank among them, scaled; at most log2 of the sample's size) and by
  *extrapolation* (a skew-normal fitted to the references' log-likelihoods, read at the
  secret's: it can tell exposures beyond the sample).
- **Extraction** from the known prefix: greedy decoding (needs no logprobs), or beam search
  over the alphabet's symbols among the top logprobs the API returns.
- **Membership of a text** by Min-K% Prob (Shi et al., ICLR 2024): the mean log-likelihood
  of the text's k% least likely tokens; a text the model trained on has fewer surprising
  tokens. The plain mean (the loss) is the baseline.

Everything goes through an :class:`~modelshield.oracle.lm.LMOracle`: one prompt per
position, teacher-forced, sharing prompts where candidates share a prefix. A token the API
does not list among its top logprobs gets an upper bound on its logprob: that of the least
likely listed token, or the mass the listed ones leave if smaller. With logprobs off, only
greedy extraction runs, and the scoring attacks refuse after one query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from modelshield.errors import AttackRefused, ConfigError, Refused
from modelshield.oracle.lm import Completion, LMOracle

BATCH = 64  # prompts per request


def usable_logprobs(oracle: LMOracle, wanted: int, probe: Sequence[int]) -> int | None:
    """The most top logprobs (up to ``wanted``) the API returns, read off its refusals: it
    asks for ``wanted``, then for the cap a refusal names, then 5 and 1. None: logprobs are
    off. Costs one query per try."""
    tries = [wanted, 5, 1]
    while tries:
        k = tries.pop(0)
        try:
            out = oracle.complete([list(probe)], max_tokens=1, logprobs=k)
        except Refused as exc:
            if exc.param != "logprobs":
                raise
            cap = _cap(str(exc))
            if cap is not None and 0 < cap < k:
                tries.insert(0, cap)
            continue
        if out[0].top_logprobs is not None:
            return k
    return None


def _cap(message: str) -> int | None:
    import re

    m = re.search(r"between 0 and (\d+)", message)
    return int(m.group(1)) if m else None


def next_token_logprobs(oracle: LMOracle, contexts: Sequence[Sequence[int]],
                        targets: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The log-probability of ``targets[i]`` after ``contexts[i]``, and whether the API
    listed it (exact) or it is the upper bound of an unlisted token."""
    answers = _answers(oracle, contexts, k)
    lp = np.empty(len(contexts))
    exact = np.zeros(len(contexts), dtype=bool)
    for i, answer in enumerate(answers):
        lp[i], exact[i] = _logprob_of(answer, int(targets[i]), oracle.vocab)
    return lp, exact


def _answers(oracle: LMOracle, contexts: Sequence[Sequence[int]], k: int) -> list[Completion]:
    """The next-token top logprobs after each context, ``BATCH`` prompts a request."""
    out: list[Completion] = []
    for start in range(0, len(contexts), BATCH):
        out += _complete(oracle, [list(c) for c in contexts[start:start + BATCH]], k)
    return out


def _complete(oracle: LMOracle, prompts: list[list[int]], k: int) -> list[Completion]:
    """One teacher-forcing request; a tier without logprobs is AttackRefused."""
    try:
        answers = oracle.complete(prompts, max_tokens=1, logprobs=k)
    except Refused as exc:
        if exc.param == "logprobs":
            raise AttackRefused("lm-privacy", f"{k} top logprobs", str(exc)) from None
        raise
    if any(not a.top_logprobs for a in answers):
        raise AttackRefused("lm-privacy", "top logprobs", "logprobs withheld")
    return answers


def _logprob_of(answer: Completion, token: int, vocab: int) -> tuple[float, bool]:
    """The token's logprob if listed; else an upper bound: no unlisted token is likelier
    than the least likely listed one, nor than all the mass the listed ones leave."""
    assert answer.top_logprobs
    top = answer.top_logprobs[0]
    if token in top:
        return float(top[token]), True
    listed = np.asarray(list(top.values()), dtype=np.float64)
    left = max(1.0 - float(np.exp(listed).sum()), 1e-12)
    return float(min(listed.min(), np.log(left))), False


def sequence_logprobs(oracle: LMOracle, prefix: Sequence[int],
                      continuations: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """The summed log-probability of each continuation after ``prefix``. Each distinct
    context is asked once, and every continuation through it reads its token off that one
    answer (candidates share their beginnings)."""
    conts = [[int(t) for t in c] for c in continuations]
    index: dict[tuple[int, ...], int] = {}
    for cont in conts:
        for i in range(len(cont)):
            index.setdefault((*prefix, *cont[:i]), len(index))
    answers = _answers(oracle, list(index), k)
    out = np.empty(len(conts))
    for n, cont in enumerate(conts):
        out[n] = sum(_logprob_of(answers[index[(*prefix, *cont[:i])]], tok, oracle.vocab)[0]
                     for i, tok in enumerate(cont))
    return out


@dataclass
class Exposure:
    """A canary's exposure, estimated two ways, with what it cost."""

    logprob: float
    rank: int  # reference candidates at least as likely as the secret
    references: int
    space: float  # |R|, the candidates of the format
    interpolation: float
    extrapolation: float
    queries: int
    info: dict[str, Any] = field(default_factory=dict)


def canary_exposure(oracle: LMOracle, prefix: Sequence[int], secret: Sequence[int],
                    alphabet: Sequence[int], *, references: int = 1000, k: int = 5,
                    seed: int = 0) -> Exposure:
    """The exposure of ``secret`` (symbols of ``alphabet`` after ``prefix``) among
    ``references`` random candidates of the same format (Carlini et al. 2019)."""
    if references < 10:
        raise ConfigError.invalid("references", "an integer >= 10", references)
    rng = np.random.default_rng(seed)
    length = len(secret)
    refs = [list(rng.choice(np.asarray(alphabet), size=length)) for _ in range(references)]
    before = oracle.used
    scores = sequence_logprobs(oracle, prefix, [list(secret), *refs], k)
    mine, others = float(scores[0]), scores[1:]
    space = float(len(alphabet)) ** length
    # Ties count against the secret: a candidate the answers cannot tell from it (both
    # below the listed logprobs, say) is as likely as far as the attacker knows.
    rank = int(np.sum(others >= mine))
    interp = float(np.log2(space) - np.log2(space * (rank + 1) / (references + 1)))
    # TF-Privacy fits a skew-normal to the references' perplexities; here to their
    # log-likelihoods (the same up to sign), read at the secret's: P[ref >= secret].
    a, loc, scale = stats.skewnorm.fit(others)
    tail = float(stats.skewnorm.sf(mine, a, loc, scale))
    extrap = float(min(-np.log2(max(tail, 1e-300)), np.log2(space)))
    return Exposure(mine, rank, references, space, interp, extrap, oracle.used - before)


def extract_secret(oracle: LMOracle, prefix: Sequence[int], length: int,
                   alphabet: Sequence[int], *, method: str = "greedy", width: int = 5,
                   k: int = 5) -> list[int]:
    """The secret the model gives after ``prefix``: greedy decoding (``length`` tokens at
    temperature 0, no logprobs needed), or beam search of ``width`` over the alphabet's
    symbols, scored by the top ``k`` logprobs the API lists (an unlisted symbol by its upper
    bound, as in :func:`next_token_logprobs`)."""
    if method == "greedy":
        out = oracle.complete([list(prefix)], max_tokens=length, temperature=0.0)
        return list(out[0].tokens)[:length]
    if method != "beam":
        raise ConfigError.invalid("method", "'greedy' or 'beam'", method)
    beams: list[tuple[float, list[int]]] = [(0.0, [])]
    for _ in range(length):
        contexts = [[*prefix, *b] for _, b in beams]
        grown = []
        for (score, b), answer in zip(beams, _answers(oracle, contexts, k), strict=True):
            for tok in alphabet:
                lp, _ = _logprob_of(answer, int(tok), oracle.vocab)
                grown.append((score + lp, [*b, int(tok)]))
        grown.sort(key=lambda t: -t[0])
        beams = grown[:width]
    return beams[0][1]


def min_k_scores(oracle: LMOracle, texts: Sequence[Sequence[int]], *, fraction: float = 0.2,
                 k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per text: Min-K% Prob (the mean of its ``fraction`` lowest token log-likelihoods) and
    the mean log-likelihood (the loss baseline). Higher: more likely a training text."""
    if not 0 < fraction <= 1:
        raise ConfigError.invalid("fraction", "a number in (0, 1]", fraction)
    contexts, targets, owner = [], [], []
    for n, ids in enumerate(texts):
        for i in range(1, len(ids)):
            contexts.append(list(ids[:i]))
            targets.append(int(ids[i]))
            owner.append(n)
    lp, _ = next_token_logprobs(oracle, contexts, targets, k)
    owners = np.asarray(owner)
    mink, mean = np.empty(len(texts)), np.empty(len(texts))
    for n in range(len(texts)):
        row = np.sort(lp[owners == n])
        take = max(1, int(np.ceil(fraction * len(row))))
        mink[n], mean[n] = row[:take].mean(), row.mean()
    return mink, mean
