"""A language model's stages, in the order that spends no work before the limits::

    authenticate -> check request -> limit requests -> size bound -> tokenize
    -> system prompt -> check prompts -> limit tokens -> detect -> generate
    -> leak filter -> record

The key, its suspension and its request limits come before anything is done with the
prompt; the prompt's size in bytes (a small multiple of the context length) before it is
tokenized; the token limits once it is. The request's other parameters are checked first,
since that costs nothing and a refused request spends no budget. vLLM's tokenizer routes
(``/tokenize``, ``/detokenize``) pass the same admission and are recorded.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from modelshield.answer import LMChoice
from modelshield.defenses.llm import check_params, check_prompts
from modelshield.defenses.stages import (
    Authenticate,
    Call,
    Detect,
    Generate,
    LeakFilter,
    Limit,
    Record,
    StageFactory,
    SystemPrompt,
    _Stage,
    lm_record,
)
from modelshield.errors import Denied, OracleError

BYTES_PER_TOKEN = 16
"""The size bound: a prompt may hold this many UTF-8 bytes per token of the model's context
before it is tokenized (English averages about 4 bytes a token in a GPT-2-style BPE; code
and whitespace runs more). Past it, the prompt could not fit once tokenized."""


class CheckRequest(_Stage):
    """The request's parameters against the tier's language-model policy and ``max_batch``:
    everything but the prompts' tokens."""

    name = "check request"

    def __call__(self, call: Call) -> None:
        policy = self.shield.llm_policies[call.key.tier]
        check_params(call.lm_request, policy, self.shield.lm.vocab, call.tier.max_batch)


class LimitRequests(Limit):
    """A suspended key is refused, then the request and row limits are charged."""

    name = "limit requests"
    kinds = ("requests", "rows")


class LimitTokens(Limit):
    """The token limits, charged once the prompts are tokenized (prompt plus every
    completion at full length)."""

    name = "limit tokens"
    kinds = ("tokens",)


class SizeBound(_Stage):
    """Refuse a prompt that could not fit the context, by its size before it is tokenized
    (413 ``prompt_too_large``): text past ``BYTES_PER_TOKEN`` bytes a token of context, token
    ids past the context, a chat request's messages past the same bytes together."""

    name = "size bound"
    param: ClassVar[str] = "prompt"  # what the route calls token-id prompts

    def __call__(self, call: Call) -> None:
        context = getattr(self.shield.lm, "context", None)
        if context is None:
            return
        req, limit = call.lm_request, context * BYTES_PER_TOKEN
        if req.messages is not None:
            size = sum(_utf8(text, limit) for _, text in req.messages)
            if size > limit:
                raise self._refuse("messages", f"the messages are {size:,} bytes", context)
        for p in req.raw_prompts if req.raw_prompts is not None else req.prompts:
            if isinstance(p, str) and _utf8(p, limit) > limit:
                raise self._refuse("prompt", f"a prompt is {_utf8(p, limit):,} bytes",
                                   context)
            if not isinstance(p, str) and len(p) > context:
                raise self._refuse(self.param, f"a prompt is {len(p):,} tokens", context)

    @staticmethod
    def _refuse(param: str, what: str, context: int) -> Denied:
        return Denied(413, "prompt_too_large", f"{what}; this model's context is {context} "
                      f"tokens, and a prompt may be at most {context * BYTES_PER_TOKEN:,} "
                      f"bytes of text ({BYTES_PER_TOKEN} a token) or {context} token ids.",
                      {"X-Error-Param": param})


def _utf8(text: str, limit: int) -> int:
    """``text``'s size in UTF-8 bytes, exact up to ``limit`` (a longer text is not encoded:
    its length in characters already passes the limit)."""
    return len(text) if len(text) > limit else len(text.encode())


class Tokenize(_Stage):
    """A completion request's prompts as sent (text or token ids) to token ids."""

    name = "tokenize"

    def __call__(self, call: Call) -> None:
        req, lm = call.lm_request, self.shield.lm
        if req.raw_prompts is None:
            return
        try:
            ids = [lm.encode(p) if isinstance(p, str) else list(p) for p in req.raw_prompts]
        except OracleError as exc:  # an upstream model's tokenizer failed
            raise Denied(getattr(exc, "client_status", 502), "upstream_error",
                         str(exc)) from None
        call.req = dataclasses.replace(req, prompts=ids)


class CheckPrompts(_Stage):
    """The tokenized prompts: none empty, token ids in the vocabulary, and each with its
    ``max_tokens`` inside the context."""

    name = "check prompts"

    def __call__(self, call: Call) -> None:
        req, lm = call.lm_request, self.shield.lm
        check_prompts(req, lm.vocab)
        context = getattr(lm, "context", None)
        longest = max((len(p) for p in req.prompts), default=0) + req.max_tokens
        if context is not None and longest > context:
            raise Denied(400, "context_length_exceeded",
                         f"This model's maximum context length is {context} tokens; the "
                         f"request asks for {longest} (prompt plus max_tokens).",
                         {"X-Error-Param": "max_tokens"})


class TokensBound(SizeBound):
    """``/detokenize``'s bound: at most the context's length of token ids."""

    param = "tokens"


class Encoded(_Stage):
    """``/tokenize``'s answer (the prompt's token ids), recorded."""

    name = "tokenizer"

    def __call__(self, call: Call) -> None:
        ids = call.lm_request.prompts[0]
        call.choices = [LMChoice(0, ids, None, None, "stop")]
        self.shield.commit(lm_record(self.shield, call, {"tokenize": ids}))


class Decoded(_Stage):
    """``/detokenize``'s answer (the token ids' text), recorded."""

    name = "detokenizer"

    def __call__(self, call: Call) -> None:
        ids = call.lm_request.prompts[0]
        try:
            text = str(self.shield.lm.decode(ids))
        except OracleError as exc:
            raise Denied(getattr(exc, "client_status", 502), "upstream_error",
                         str(exc)) from None
        call.choices = [LMChoice(0, ids, None, None, "stop", text)]
        self.shield.commit(lm_record(self.shield, call, {"detokenize": text}))


LM_STAGES: tuple[StageFactory, ...] = (
    Authenticate, CheckRequest, LimitRequests, SizeBound, Tokenize, SystemPrompt, CheckPrompts,
    LimitTokens, Detect, Generate, LeakFilter, Record)
TOKENIZE_STAGES: tuple[StageFactory, ...] = (
    Authenticate, LimitRequests, SizeBound, Tokenize, LimitTokens, Encoded)
DETOKENIZE_STAGES: tuple[StageFactory, ...] = (
    Authenticate, LimitRequests, TokensBound, LimitTokens, Decoded)
