"""``POST /v1/completions``: prompts (text or token ids) to completions."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from modelshield.answer import LMChoice, LMRequest
from modelshield.defenses.llm import Delta
from modelshield.defenses.shield import Decision
from modelshield.serve.context import GatewayDep, refusal
from modelshield.serve.openai.protocol import CompletionRequest, stops
from modelshield.serve.openai.serving import (
    LMServing,
    bias,
    check_params,
    openai_router,
    prompts,
    serving,
    usage,
)
from modelshield.serve.openai.streaming import stream, usage_chunk

router = openai_router()


@router.post("/v1/completions", metric="completions", openai=True)
async def completions(body: CompletionRequest, request: Request, gw: GatewayDep) -> Any:
    served = serving(gw, body.model)
    req = _request(served, body)
    form = CompletionForm(served, body, req, {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
        "created": int(time.time()), "model": served.name})
    if body.stream:
        return await stream(served, request, req, body.model,
                            body.return_tokens_as_token_ids, form)
    choices, decision, as_ids = await served.run(request, req, body.model,
                                                 body.return_tokens_as_token_ids)
    return JSONResponse(form.response(choices, decision, as_ids), headers=decision.headers)


def _request(served: LMServing, body: CompletionRequest) -> LMRequest:
    """The request as the Shield takes it, its prompts as sent (the Shield tokenizes them
    once the key's request limits admit it); or a refusal."""
    check_params(body)
    if body.echo and body.logprobs is not None:
        raise refusal(400, "unsupported_parameter", "echo with logprobs would return the "
                      "prompt's logprobs, which this gateway does not give out; send one or "
                      "the other.", "echo")
    return LMRequest([], body.max_tokens, body.temperature, body.top_p, body.n, body.seed,
                     body.logprobs, bias(body.logit_bias), stops(body.stop),
                     raw_prompts=prompts(body.prompt))


@dataclass(frozen=True)
class CompletionForm:
    """How a completion is worded, whole or streamed; ``head`` opens every chunk."""

    served: LMServing
    body: CompletionRequest
    req: LMRequest
    head: dict[str, Any]

    def response(self, choices: list[LMChoice], decision: Decision, as_ids: bool
                 ) -> dict[str, Any]:
        return {**self.head, "choices": [self.choice(i, c, as_ids)
                                         for i, c in enumerate(choices)],
                "usage": usage(decision, choices)}

    def choice(self, i: int, c: LMChoice, as_ids: bool, echo: bool = True) -> dict[str, Any]:
        prefix = self.prompt_text(c.prompt_index) if echo and self.body.echo else ""
        item = {"index": i, "text": prefix + self.served.text(c),
                "logprobs": self._logprobs(c, as_ids), "finish_reason": c.finish_reason}
        if self.body.return_token_ids:
            item["token_ids"] = c.tokens
        return item

    def prompt_text(self, i: int) -> str:
        """Prompt ``i`` as text (``echo``): as sent, or its token ids decoded."""
        lm, p = self.served.lm, (self.req.raw_prompts or [])[i]
        return p if isinstance(p, str) else str(lm.decode(p)) if lm else ""

    def _logprobs(self, c: LMChoice, as_ids: bool) -> dict[str, Any] | None:
        if c.logprobs is None or c.top_logprobs is None:
            return None
        texts = [self.served.token(t, as_ids) for t in c.tokens]
        offsets, pos = [], 0
        for t in texts:
            offsets.append(pos)
            pos += len(t)
        return {"tokens": texts, "token_logprobs": c.logprobs, "text_offset": offsets,
                "top_logprobs": [{self.served.token(t, as_ids): v for t, v in top}
                                 for top in c.top_logprobs]}

    def opening(self) -> list[dict[str, Any]]:
        """With ``echo``, each prompt before its choices' tokens."""
        req = self.req
        if not self.body.echo:
            return []
        return [{**self.head, "choices": [{
            "index": i, "text": self.prompt_text(i // req.n), "logprobs": None,
            "finish_reason": None}]} for i in range(req.count * req.n)]

    def token(self, d: Delta, as_ids: bool) -> dict[str, Any]:
        token = self.served.token
        logprobs = None if d.logprobs is None or not d.tokens else {
            "tokens": [token(t, as_ids) for t in d.tokens], "token_logprobs": d.logprobs,
            "top_logprobs": [{token(t, as_ids): v for t, v in top} for top in d.tops or []]}
        return {**self.head, "choices": [{"index": d.choice, "text": d.text,
                                          "logprobs": logprobs,
                                          "finish_reason": d.finish_reason}]}

    def whole(self, choices: list[LMChoice], as_ids: bool) -> list[dict[str, Any]]:
        return [{**self.head, "choices": [self.choice(i, c, as_ids, echo=False)]}
                for i, c in enumerate(choices)]

    def closing(self, choices: list[LMChoice], decision: Decision) -> dict[str, Any] | None:
        return usage_chunk(self.head, self.body.stream_options, choices, decision)
