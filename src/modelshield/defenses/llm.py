"""What a language-model tier lets out, and how one decoding step is taken under it.

The knobs are the ones logit-stealing attacks use (Carlini et al., ICML 2024; Finlayson et
al., COLM 2024): logprobs on or off, how many top logprobs, logit bias allowed (with a cap on
entries) or refused, whether a logit bias changes the returned logprobs (the vendors' fix of
March 2024 makes it not), and logprob rounding and noise. The noise is keyed: seeded by an
HMAC of the prompt and position, so asking the same thing again returns the same noise and
averaging repeats gains nothing. A tier can also watermark the text it generates
(``watermark_delta``; :mod:`modelshield.defenses.textmark`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelshield.answer import LMChoice, LMRequest
from modelshield.defenses.leakfilter import LeakFilterSpec
from modelshield.defenses.textmark import TextWatermark
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
    # Logit harvesting: flagged once an account has asked for as many logprobs (positions
    # times the top logprobs and the sampled token's) as this many full logit vectors hold.
    probe_logit_vectors: int = Field(default=128, ge=1)
    # A sweep is flagged only over this many requests, with this share of bias entries
    # naming tokens the account had not biased before (a fixed ban list falls towards 0).
    probe_min_requests: int = Field(default=4, ge=1)
    probe_bias_novelty: float = Field(default=0.5, gt=0.0, le=1.0)
    # The text watermark (Kirchenbauer et al. 2023; defenses/textmark.py): delta added to
    # the logits of a keyed green list of a share gamma of the vocabulary; 0 is off.
    watermark_delta: float = Field(default=0.0, ge=0.0, le=20.0)
    watermark_gamma: float = Field(default=0.25, gt=0.0, lt=1.0)
    # The system prompt put before every chat request on this tier (over the model's own,
    # ``model.system_prompt``), and the filter that redacts answers giving it away
    # (defenses/leakfilter.py).
    system_prompt: str | None = Field(default=None, min_length=1, max_length=20_000)
    leak_filter: LeakFilterSpec | None = None
    # The HMAC keys of the logprob noise and of the text watermark: the gateway sets them
    # from the config's noise_secret and watermark_secret (never written in a tier).
    noise_key: str = Field(default="", exclude=True)
    watermark_key: str = Field(default="", exclude=True)


MAX_STOP, MAX_STOP_CHARS = 4, 256
"""Stop sequences per request (as OpenAI allows), and their length: each is sought in the
text after every token."""


def check_params(req: LMRequest, policy: LLMPolicy, vocab: int,
                 max_batch: int | None = None) -> None:
    """Everything but the prompts' tokens, which need no tokenizer to check: the number of
    sequences, stop sequences, seed, sampling, logprobs and logit bias."""
    if max_batch is not None and req.count * max(req.n, 1) > max_batch:
        raise Denied(413, "batch_too_large", f"at most {max_batch} sequences (prompts times "
                     f"n) per request on this tier; got {req.count} prompts times n = "
                     f"{req.n}.", {"X-Error-Param": "prompt"})
    if len(req.stop) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in req.stop):
        raise _bad("stop", f"at most {MAX_STOP} stop sequences of at most {MAX_STOP_CHARS} "
                   f"characters; got {len(req.stop)}.")
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise _bad("seed", f"seed must be an integer in [0, 2**63); got {req.seed}.")
    _check_sampling(req, policy)
    if req.logprobs is not None:
        _check_logprobs(req.logprobs, policy, "top_logprobs" if req.messages is not None
                        else "logprobs")
    if req.logit_bias:
        _check_logit_bias(req.logit_bias, policy, vocab)


def _check_logprobs(k: int, policy: LLMPolicy, param: str) -> None:
    """``param``: what the request calls the number of top logprobs (a chat request's
    ``top_logprobs``, a completion's ``logprobs``)."""
    if not policy.logprobs:
        raise _bad("logprobs", "logprobs are not available on this tier.",
                   "logprobs_not_allowed")
    if not 0 <= k <= policy.max_top_logprobs:
        raise _bad(param, f"{param} must be between 0 and {policy.max_top_logprobs} on this "
                   f"tier; got {k}.")


def _bad(param: str, message: str, code: str = "invalid_value") -> Denied:
    return Denied(400, code, message, {"X-Error-Param": param})


def check_prompts(req: LMRequest, vocab: int) -> None:
    """The tokenized prompts: none empty, every token id in the vocabulary."""
    if not req.prompts or any(len(p) == 0 for p in req.prompts):
        raise _bad("prompt", "prompt must not be empty.")
    if any(t < 0 or t >= vocab for p in req.prompts for t in p):
        raise _bad("prompt", f"prompt token ids must be in [0, {vocab}).")


def _check_sampling(req: LMRequest, policy: LLMPolicy) -> None:
    if req.max_tokens < 0 or req.max_tokens > policy.max_tokens:
        raise _bad("max_tokens", f"max_tokens must be between 0 and {policy.max_tokens}; "
                   f"got {req.max_tokens}.")
    if not 0 <= req.temperature <= 2:
        raise _bad("temperature", f"temperature must be in [0, 2]; got {req.temperature}.")
    if not 0 < req.top_p <= 1:
        raise _bad("top_p", f"top_p must be in (0, 1]; got {req.top_p}.")
    if not 1 <= req.n <= policy.max_n:
        raise _bad("n", f"n must be between 1 and {policy.max_n}; got {req.n}.")


def _check_logit_bias(bias: Mapping[int, float], policy: LLMPolicy, vocab: int) -> None:
    if policy.logit_bias == "refuse":
        raise _bad("logit_bias", "logit_bias is not available on this tier.",
                   "logit_bias_not_allowed")
    if len(bias) > policy.max_logit_bias_entries:
        raise _bad("logit_bias", f"at most {policy.max_logit_bias_entries} logit_bias "
                   f"entries on this tier; got {len(bias)}.")
    for token, value in bias.items():
        if not 0 <= token < vocab:
            raise _bad("logit_bias", f"logit_bias token {token} is outside the vocabulary "
                       f"[0, {vocab}).")
        if not -100 <= value <= 100:
            raise _bad("logit_bias", f"logit_bias values must be in [-100, 100]; token "
                       f"{token} has {value}.")


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max()
    return np.asarray(z - m - np.log(np.exp(z - m).sum()))


LogitsFn = Callable[[Sequence[Sequence[int]]], np.ndarray]


class Stepper(Protocol):
    """Incremental decoding over a batch of sequences (a model's key/value cache)."""

    def first(self) -> np.ndarray:
        """(n, vocab) logits after each prompt."""
        ...

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        """Append one token to every sequence; (n, vocab) logits after it."""
        ...


@dataclass(frozen=True)
class Delta:
    """What one step of one choice sends when streamed: the tokens whose text is now safe
    to send (none while it could still become part of a stop sequence or an incomplete
    character; several once it is), their logprobs, and that text."""

    choice: int
    tokens: list[int]
    logprobs: list[float] | None
    tops: list[list[tuple[int, float]]] | None
    text: str
    finish_reason: str | None  # set on a choice's last step


class Generation:
    """Every choice of ``req``, all choices a step at a time, under the tier's ``policy``.

    ``steps()`` yields each step's :class:`Delta` list, so a stream can send tokens as they
    come; ``choices()`` runs to the end and returns the choices; ``abort()`` ends every
    choice still running (finish reason ``abort``: the reader is gone). Sampling uses the
    biased logits; the returned logprobs are those of the biased distribution, or of the
    unbiased one when ``bias_affects_logprobs`` is off. A choice ends at ``eos``, at
    ``max_tokens``, or before its first stop sequence (``req.stop``, checked on the decoded
    text). A stop sequence cuts the choice at a token's end: its text is the text of the
    tokens wholly before the stop sequence, so the tokens and logprobs returned cover
    exactly the text returned (a token the stop sequence begins inside goes with it).

    With ``stepper`` (a key/value cache) the prompts run once and each step costs one token
    per sequence; else ``logits_fn`` is called on the whole sequences every step. The text is
    decoded after every token only where it is needed then (stop sequences, or ``stream``);
    otherwise once, at the end.
    """

    def __init__(self, logits_fn: LogitsFn, req: LMRequest, policy: LLMPolicy, eos: int,
                 text: Callable[[Sequence[int]], str] | None = None,
                 stepper: Callable[[list[list[int]]], Stepper] | None = None,
                 stream: bool = False) -> None:
        self.logits_fn, self.req, self.policy, self.eos = logits_fn, req, policy, eos
        self.text_of = text
        self.incremental = text is not None and (stream or bool(req.stop))
        self.stepper = stepper if req.max_tokens > 1 else None
        self.slots = [(pi, c) for pi in range(len(req.prompts)) for c in range(req.n)]
        self.seqs = [list(req.prompts[pi]) for pi, _ in self.slots]
        self.rngs = [np.random.default_rng(None if req.seed is None else [req.seed, pi, c])
                     for pi, c in self.slots]
        self.out: list[list[int]] = [[] for _ in self.slots]
        self.lps: list[list[float]] = [[] for _ in self.slots]
        self.tops: list[list[list[tuple[int, float]]]] = [[] for _ in self.slots]
        self.ends: list[list[int]] = [[] for _ in self.slots]  # each token's text's end
        self.finish = ["length"] * len(self.slots)
        self.texts = [""] * len(self.slots)
        self.sent = [0] * len(self.slots)  # characters of each text already streamed
        self.released = [0] * len(self.slots)  # tokens of each choice already streamed
        self.live = list(range(len(self.slots)))
        self._done = False
        self.mark: TextWatermark | None = None

    def steps(self) -> Iterator[list[Delta]]:
        bias_ids = np.fromiter(self.req.logit_bias.keys(), dtype=np.int64,
                               count=len(self.req.logit_bias))
        bias_vals = np.fromiter(self.req.logit_bias.values(), dtype=np.float64,
                                count=len(self.req.logit_bias))
        cache = self.stepper([list(s) for s in self.seqs]) if self.stepper else None
        logits = cache.first() if cache is not None else None
        for step in range(self.req.max_tokens):
            if not self.live or self._done:
                break
            if cache is None:
                rows = dict(zip(self.live, np.asarray(self.logits_fn(
                    [self.seqs[i] for i in self.live])), strict=True))
            else:
                rows = {i: logits[i] for i in self.live}  # type: ignore[index]
            deltas = [self._next(i, rows[i], step, bias_ids, bias_vals) for i in self.live]
            self.live = [d.choice for d in deltas if d.finish_reason is None]
            yield [d for d in deltas if d.tokens or d.text or d.finish_reason]
            if cache is not None and self.live and step + 1 < self.req.max_tokens:
                # Finished choices ride along with their last token; their logits are unused.
                logits = cache.step([s[-1] for s in self.seqs])
        self._done = True

    def abort(self) -> None:
        """End every choice still running, as it stands (finish reason ``abort``)."""
        for i in self.live:
            self.finish[i] = "abort"
        self.live, self._done = [], True

    def _next(self, i: int, row: np.ndarray, step: int, bias_ids: np.ndarray,
              bias_vals: np.ndarray) -> Delta:
        token = self._sample(i, row, step, bias_ids, bias_vals)
        self.out[i].append(token)
        self.seqs[i].append(token)
        finish = "stop" if token == self.eos else None
        if self.incremental and self.text_of is not None:
            finish = self._decode_step(i, self.text_of) or finish
        if finish is None and len(self.out[i]) >= self.req.max_tokens:
            finish = "length"
        if finish is not None:
            self.finish[i] = finish
        return self._release(i, finish)

    def _sample(self, i: int, row: np.ndarray, step: int, bias_ids: np.ndarray,
                bias_vals: np.ndarray) -> int:
        """Choice ``i``'s next token, its logprobs kept when the request asks for them."""
        req, policy = self.req, self.policy
        z = row.astype(np.float64)
        if policy.watermark_delta > 0:  # the model as served leans green: logprobs too
            if self.mark is None:
                self.mark = text_watermark(policy.watermark_key, len(z), policy.watermark_gamma,
                                           policy.watermark_delta)
            z = self.mark.bias(z, self.seqs[i][-1])
        zb = z.copy()
        if len(bias_ids):
            zb[bias_ids] += bias_vals
        token = _sample(zb, req.temperature, req.top_p, self.rngs[i])
        if req.logprobs is not None:
            lp = _shape(log_softmax(zb if policy.bias_affects_logprobs else z), policy,
                        self.seqs[i], step)
            k = min(req.logprobs, len(lp))
            top_list = []
            if k > 0:
                top = np.argpartition(-lp, k - 1)[:k]
                top = top[np.argsort(-lp[top], kind="stable")]
                top_list = list(zip(top.tolist(), lp[top].tolist(), strict=True))
            self.lps[i].append(float(lp[token]))
            self.tops[i].append(top_list)
        return token

    def _decode_step(self, i: int, text_of: Callable[[Sequence[int]], str]) -> str | None:
        """Choice ``i``'s text after its new token; at a stop sequence, the choice cut to
        the tokens wholly before it, and ``"stop"``."""
        full = text_of(self.out[i])
        ends = self.ends[i]
        ends.append(len(full))
        at = _stop_at(full, self.req.stop)
        if at is None:
            self.texts[i] = full
            return None
        keep = self.released[i]  # what was streamed stays (it ended before the stop)
        while keep < len(ends) and ends[keep] <= at:
            keep += 1
        for kept in (self.out[i], self.lps[i], self.tops[i], ends):
            del kept[keep:]
        self.texts[i] = full[:ends[-1]] if ends else ""
        return "stop"

    def _release(self, i: int, finish: str | None) -> Delta:
        """What choice ``i`` sends now: once it ends, all that is left; until then, the
        tokens whose text can no longer become part of a stop sequence or an incomplete
        character."""
        upto, end = len(self.out[i]), len(self.texts[i])
        if finish is None and self.incremental:
            text, ends = self.texts[i], self.ends[i]
            hold = max((len(s) for s in self.req.stop), default=1) - 1
            limit = min(len(text) - hold, len(text.rstrip("\ufffd")))
            upto = self.released[i]
            while upto < len(ends) and ends[upto] <= limit:
                upto += 1
            end = ends[upto - 1] if upto else 0
        first, self.released[i] = self.released[i], upto
        piece = self.texts[i][self.sent[i]:end] if end > self.sent[i] else ""
        self.sent[i] = max(self.sent[i], end)
        with_lp = self.req.logprobs is not None
        return Delta(i, self.out[i][first:upto], self.lps[i][first:upto] if with_lp else None,
                     self.tops[i][first:upto] if with_lp else None, piece, finish)

    def choices(self) -> list[LMChoice]:
        if not self._done:
            for _ in self.steps():
                pass
        if self.text_of is not None and not self.incremental:
            self.texts = [self.text_of(out) for out in self.out]
        with_lp = self.req.logprobs is not None
        return [LMChoice(pi, self.out[i], self.lps[i] if with_lp else None,
                         self.tops[i] if with_lp else None, self.finish[i],
                         self.texts[i] if self.text_of is not None else None)
                for i, (pi, _) in enumerate(self.slots)]


@functools.lru_cache(maxsize=16)
def text_watermark(key: str, vocab: int, gamma: float, delta: float) -> TextWatermark:
    """One green-list cache per key and vocabulary, shared by every request."""
    return TextWatermark(key, vocab, gamma, delta)


def decode(logits_fn: LogitsFn, req: LMRequest, policy: LLMPolicy, eos: int,
           text: Callable[[Sequence[int]], str] | None = None,
           stepper: Callable[[list[list[int]]], Stepper] | None = None) -> list[LMChoice]:
    """Every choice of ``req`` at once (see :class:`Generation`)."""
    return Generation(logits_fn, req, policy, eos, text, stepper).choices()


def _stop_at(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


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
