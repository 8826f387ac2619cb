"""One language model served on the OpenAI-compatible routes: what the routes share.

A request's refusals are raised as :class:`~modelshield.errors.Denied` and answered in
the OpenAI shape, ``{"error": {"message", "type", "param", "code"}}``, counted under the
route's label (:mod:`modelshield.serve.errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from modelshield.answer import LMChoice, LMRequest
from modelshield.defenses.shield import Decision, Shield
from modelshield.defenses.stages import Call, StageFactory
from modelshield.errors import OracleError
from modelshield.serve.context import Gateway, api_key, client_ip, refusal
from modelshield.serve.errors import ERROR_RESPONSES, shown
from modelshield.serve.openai.protocol import Prompt, unsupported
from modelshield.serve.routing import GatewayRouter


def openai_router() -> GatewayRouter:
    """The router of one family of OpenAI-compatible routes."""
    return GatewayRouter(tags=["OpenAI-compatible"], responses=ERROR_RESPONSES)


def serving(gw: Gateway, model: str) -> LMServing:
    """The serving of ``model`` (the request's ``model`` field), or a 404."""
    shield = gw.shields.get(model)
    if shield is None:
        raise refusal(404, "model_not_found", f"The model {shown(model)} does not exist; "
                      f"this gateway serves {', '.join(map(repr, gw.shields))}.", "model")
    return LMServing(shield, gw)


@dataclass(frozen=True)
class LMServing:
    """One model's OpenAI-compatible serving: its Shield, and the gateway's counts."""

    shield: Shield
    gw: Gateway

    @property
    def name(self) -> str:
        return self.shield.spec.name

    @property
    def lm(self) -> Any:
        """The language model, or None for a classifier."""
        return self.shield.lm

    def entry(self) -> dict[str, Any]:
        """The model's ``/v1/models`` entry."""
        data: dict[str, Any] = {"id": self.name, "object": "model", "created": 0,
                                "owned_by": "modelshield"}
        if self.lm is not None:
            data.update(vocab_size=self.lm.vocab, context_length=self.lm.context)
        return data

    async def run(self, request: Request, req: LMRequest, model: str, as_ids: bool
                  ) -> tuple[list[LMChoice], Decision, bool]:
        """The request through the Shield: (choices, decision, whether to name tokens by
        id)."""
        self.precheck(req, model)
        choices, decision = await run_in_threadpool(self.shield.handle_completion,
                                                    api_key(request), req, client_ip(request))
        self.gw.count(request, 200)
        if not await self.name_tokens(choices, as_ids):
            as_ids = True  # the upstream could not name the tokens: give their ids
        return choices, decision, as_ids

    def precheck(self, req: LMRequest, model: str) -> None:
        """Refuse what the Shield need not see: another model, or not a language model.
        The prompt's size and context are the Shield's to check, after the limits."""
        if model != self.name:
            raise refusal(404, "model_not_found", f"The model {shown(model)} does not exist; "
                          f"this gateway serves {self.name!r}.", "model")
        if self.lm is None:
            raise refusal(404, "model_not_found", f"{self.name!r} is not a language model.",
                          "model")

    async def tokenizer(self, request: Request, req: LMRequest, model: str,
                        stages: Sequence[StageFactory]) -> Call:
        """A tokenizer route's request through ``stages`` (the key, its limits, the size
        bound, the work, the record): the finished call, or a refusal."""
        self.precheck(req, model)
        shield = self.shield
        call = await run_in_threadpool(shield.run, [make(shield) for make in stages],
                                       Call(api_key(request), client_ip(request), Decision(),
                                            req=req))
        self.gw.count(request, 200)
        return call

    async def name_tokens(self, choices: list[LMChoice], as_ids: bool) -> bool:
        """Fetch the token texts a response will name before it is built (an upstream
        model is asked over HTTP, so not on the event loop). False if the upstream could
        not say them: the response then names tokens ``token_id:N``."""
        lm = self.lm
        if not as_ids and lm is not None and hasattr(lm, "complete"):
            wanted = {t for c in choices for top in (c.top_logprobs or []) for t, _ in top}
            wanted.update(t for c in choices if c.logprobs is not None for t in c.tokens)
            try:
                await run_in_threadpool(lambda: [lm.token_text(t) for t in sorted(wanted)])
            except OracleError:
                return False
        return True

    def token(self, t: int, as_ids: bool) -> str:
        """How a response names token ``t``."""
        lm = self.lm
        return f"token_id:{t}" if as_ids or lm is None else str(lm.token_text(t))

    def text(self, c: LMChoice) -> str:
        """A choice's text."""
        lm = self.lm
        return c.text if c.text is not None else (lm.decode(c.tokens) if lm else "")


def usage(decision: Decision, choices: list[LMChoice]) -> dict[str, int]:
    """Tokens billed: the prompts as the Shield answered them (a chat request's with its
    system prompt) and the completions."""
    prompt = decision.prompt_tokens
    completion = sum(len(c.tokens) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def bias(raw: dict[str, float] | None) -> dict[int, float]:
    """The request's ``logit_bias`` by token id."""
    out = {}
    for k, v in (raw or {}).items():
        try:
            out[int(k)] = float(v)
        except ValueError:
            raise refusal(400, "invalid_value", f"logit_bias keys must be token ids; got "
                          f"{k!r}.", "logit_bias") from None
    return out


def check_params(body: BaseModel) -> None:
    """Refuse a parameter the gateway does not implement."""
    param = unsupported(body)
    if param is not None:
        raise refusal(400, "unsupported_parameter", f"{param} is not supported by this "
                      "gateway; leave it out.", param)


def prompts(prompt: Prompt) -> list[str | list[int]]:
    """A completion request's prompts, each a text or a list of token ids (tokenized by
    the Shield once the key's request limits admit it)."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return [p if isinstance(p, str) else list(p) for p in prompt]  # type: ignore[arg-type]
