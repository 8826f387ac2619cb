"""What a language-model tier lets out, and how one decoding step is taken under it.

The knobs are the ones logit-stealing attacks use (Carlini et al., ICML 2024; Finlayson et
al., COLM 2024): logprobs on or off, how many top logprobs, logit bias allowed (with a cap on
entries) or refused, whether a logit bias changes the returned logprobs (the vendors' fix of
March 2024 makes it not), and logprob rounding and noise. The noise is keyed: seeded by an
HMAC of the prompt and position, so asking the same thing again returns the same noise and
averaging repeats gains nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelshield.answer import LMChoice, LMRequest
from modelshield.errors import Denied


class LLMPolicy(BaseModel):
    """A tier's language-model output policy (the ``llm`` section of a tier)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    logprobs: bool = True
    max_top_logprobs: int = Field(default=5, ge=0)
    logit_bias: Literal["allow", "refuse"] = "allow"
    max_logit_bias_entries: int = Field(default=300, ge=0)
    bias_affects_logprobs: bool = True
    logprob_decimals: int | None = Field(default=None, ge=0, le=12)
    logprob_noise: float = Field(default=0.0, ge=0.0)
    max_tokens: int = Field(default=512, ge=1)
    max_n: int = Field(default=8, ge=1)
    detect_probing: bool = False
    probe_distinct_bias_tokens: int = Field(default=64, ge=1)
    probe_single_token_requests: int = Field(default=200, ge=1)
    # A sweep is flagged only over this many requests, with this share of bias entries
    # naming tokens the account had not biased before (a fixed ban list falls towards 0).
    probe_min_requests: int = Field(default=4, ge=1)
    probe_bias_novelty: float = Field(default=0.5, gt=0.0, le=1.0)
    # The HMAC key of the logprob noise: the gateway sets it from the config's
    # noise_secret (it is never written in a tier).
    noise_key: str = Field(default="", exclude=True)


def check_request(req: LMRequest, policy: LLMPolicy, vocab: int,
                  max_batch: int | None = None) -> None:
    """Refuse (Denied 400, OpenAI-style ``param``) what the tier does not allow;
    ``max_batch``: the tier's most sequences (prompts times ``n``) in one request."""
    def bad(param: str, message: str, code: str = "invalid_value") -> Denied:
        return Denied(400, code, message, {"X-Error-Param": param})

    if not req.prompts or any(len(p) == 0 for p in req.prompts):
        raise bad("prompt", "prompt must not be empty.")
    if max_batch is not None and len(req.prompts) * max(req.n, 1) > max_batch:
        raise Denied(413, "batch_too_large", f"at most {max_batch} sequences (prompts times "
                     f"n) per request on this tier; got {len(req.prompts)} prompts times n = "
                     f"{req.n}.", {"X-Error-Param": "prompt"})
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise bad("seed", f"seed must be an integer in [0, 2**63); got {req.seed}.")
    if any(t < 0 or t >= vocab for p in req.prompts for t in p):
        raise bad("prompt", f"prompt token ids must be in [0, {vocab}).")
    if req.max_tokens < 0 or req.max_tokens > policy.max_tokens:
        raise bad("max_tokens", f"max_tokens must be between 0 and {policy.max_tokens}; "
                  f"got {req.max_tokens}.")
    if not 0 <= req.temperature <= 2:
        raise bad("temperature", f"temperature must be in [0, 2]; got {req.temperature}.")
    if not 0 < req.top_p <= 1:
        raise bad("top_p", f"top_p must be in (0, 1]; got {req.top_p}.")
    if not 1 <= req.n <= policy.max_n:
        raise bad("n", f"n must be between 1 and {policy.max_n}; got {req.n}.")
    if req.logprobs is not None:
        if not policy.logprobs:
            raise bad("logprobs", "logprobs are not available on this tier.",
                      "logprobs_not_allowed")
        if not 0 <= req.logprobs <= policy.max_top_logprobs:
            raise bad("logprobs", f"logprobs must be between 0 and {policy.max_top_logprobs} "
                      f"on this tier; got {req.logprobs}.")
    if req.logit_bias:
        if policy.logit_bias == "refuse":
            raise bad("logit_bias", "logit_bias is not available on this tier.",
                      "logit_bias_not_allowed")
        if len(req.logit_bias) > policy.max_logit_bias_entries:
            raise bad("logit_bias", f"at most {policy.max_logit_bias_entries} logit_bias "
                      f"entries on this tier; got {len(req.logit_bias)}.")
        for token, value in req.logit_bias.items():
            if not 0 <= token < vocab:
                raise bad("logit_bias", f"logit_bias token {token} is outside the vocabulary "
                          f"[0, {vocab}).")
            if not -100 <= value <= 100:
                raise bad("logit_bias", f"logit_bias values must be in [-100, 100]; token "
                          f"{token} has {value}.")


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max()
    return np.asarray(z - m - np.log(np.exp(z - m).sum()))


LogitsFn = Callable[[Sequence[Sequence[int]]], np.ndarray]


def decode(logits_fn: LogitsFn, req: LMRequest, policy: LLMPolicy, eos: int) -> list[LMChoice]:
    """Generate every choice of ``req``, all choices a step at a time (one batched call of
    ``logits_fn(list of sequences) -> (n, vocab)`` per step). Sampling uses the biased
    logits; the returned logprobs are those of the biased distribution, or of the unbiased
    one when ``bias_affects_logprobs`` is off."""
    bias_ids = np.fromiter(req.logit_bias.keys(), dtype=np.int64, count=len(req.logit_bias))
    bias_vals = np.fromiter(req.logit_bias.values(), dtype=np.float64,
                            count=len(req.logit_bias))
    slots = [(pi, c) for pi in range(len(req.prompts)) for c in range(req.n)]
    seqs = [list(req.prompts[pi]) for pi, _ in slots]
    rngs = [np.random.default_rng(None if req.seed is None else [req.seed, pi, c])
            for pi, c in slots]
    out: list[list[int]] = [[] for _ in slots]
    lps: list[list[float]] = [[] for _ in slots]
    tops: list[list[list[tuple[int, float]]]] = [[] for _ in slots]
    finish = ["length"] * len(slots)
    live = list(range(len(slots)))
    for step in range(req.max_tokens):
        if not live:
            break
        logits = np.asarray(logits_fn([seqs[i] for i in live]))
        still = []
        for row, i in zip(logits, live, strict=True):
            z = row.astype(np.float64)
            zb = z.copy()
            if len(bias_ids):
                zb[bias_ids] += bias_vals
            token = _sample(zb, req.temperature, req.top_p, rngs[i])
            if req.logprobs is not None:
                lp = log_softmax(zb if policy.bias_affects_logprobs else z)
                lp = _shape(lp, policy, seqs[i], step)
                lps[i].append(float(lp[token]))
                k = min(req.logprobs, len(lp))
                if k > 0:
                    top = np.argpartition(-lp, k - 1)[:k]
                    top = top[np.argsort(-lp[top], kind="stable")]
                    tops[i].append(list(zip(top.tolist(), lp[top].tolist(), strict=True)))
                else:
                    tops[i].append([])
            out[i].append(token)
            seqs[i].append(token)
            if token == eos:
                finish[i] = "stop"
            else:
                still.append(i)
        live = still
    with_lp = req.logprobs is not None
    return [LMChoice(pi, out[i], lps[i] if with_lp else None, tops[i] if with_lp else None,
                     finish[i]) for i, (pi, _) in enumerate(slots)]


def _sample(z: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature == 0:
        return int(np.argmax(z))
    p = np.exp(log_softmax(z / temperature))
    if top_p < 1:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(len(p), p=p))


def _shape(lp: np.ndarray, policy: LLMPolicy, seq: list[int], step: int) -> np.ndarray:
    if policy.logprob_noise > 0:
        digest = hmac.new(policy.noise_key.encode(),
                          np.asarray(seq, dtype=np.int64).tobytes() + step.to_bytes(4, "little"),
                          hashlib.sha256).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        lp = np.minimum(lp + rng.normal(0.0, policy.logprob_noise, lp.shape), 0.0)
    if policy.logprob_decimals is not None:
        lp = np.round(lp, policy.logprob_decimals)
    return lp


def shape_choices(choices: list[LMChoice], req: LMRequest, policy: LLMPolicy,
                  vocab: int) -> list[LMChoice]:
    """The tier's logprob noise and rounding, applied to choices generated elsewhere (an
    upstream server) exactly as ``decode`` applies them to a local model's: the same keyed
    noise for the same prompt, prefix and step."""
    if policy.logprob_noise <= 0 and policy.logprob_decimals is None:
        return choices
    out = []
    for c in choices:
        if c.logprobs is None or c.top_logprobs is None:
            out.append(c)
            continue
        seq = list(req.prompts[c.prompt_index])
        lps, tops = [], []
        for step, (token, top) in enumerate(zip(c.tokens, c.top_logprobs, strict=True)):
            ids = np.array([token] + [t for t, _ in top], dtype=np.int64)
            full = np.zeros(vocab)
            full[ids] = [c.logprobs[step]] + [v for _, v in top]
            shaped = _shape(full, policy, seq, step)
            lps.append(float(shaped[token]))
            tops.append(sorted(((t, float(shaped[t])) for t, _ in top), key=lambda e: -e[1]))
            seq.append(token)
        out.append(LMChoice(c.prompt_index, c.tokens, lps, tops, c.finish_reason, c.text))
    return out
