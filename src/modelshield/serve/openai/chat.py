"""``POST /v1/chat/completions``: messages to an assistant's replies. The Shield builds the
prompt from the messages once the key is checked, with the deployment's system prompt
first."""

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
from modelshield.serve.openai.protocol import ChatRequest, stops
from modelshield.serve.openai.serving import (
    LMServing,
    bias,
    check_params,
    openai_router,
    serving,
    usage,
)
from modelshield.serve.openai.streaming import stream, usage_chunk

router = openai_router()


@router.post("/v1/chat/completions", metric="chat", openai=True)
async def chat(body: ChatRequest, request: Request, gw: GatewayDep) -> Any:
    served = serving(gw, body.model)
    req = _request(served, body)
    form = ChatForm(served, body, req, {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
        "created": int(time.time()), "model": served.name})
    if body.stream:
        return await stream(served, request, req, body.model,
                            body.return_tokens_as_token_ids, form)
    choices, decision, as_ids = await served.run(request, req, body.model,
                                                 body.return_tokens_as_token_ids)
    return JSONResponse(form.response(choices, decision, as_ids), headers=decision.headers)


def _request(served: LMServing, body: ChatRequest) -> LMRequest:
    """The request as the Shield takes it (the messages, not yet a prompt); or a refusal."""
    if served.lm is None:
        raise refusal(404, "model_not_found", f"{served.name!r} is not a language model.",
                      "model")
    check_params(body)
    logit_bias = bias(body.logit_bias)
    if body.top_logprobs is not None and not body.logprobs:
        raise refusal(400, "invalid_value", "top_logprobs needs logprobs: true.",
                      "top_logprobs")
    max_tokens = next((m for m in (body.max_completion_tokens, body.max_tokens)
                       if m is not None), 16)  # 0 is 0 tokens, not the default
    messages: list[tuple[str, str]] = [(m.role, m.text) for m in body.messages]
    return LMRequest([], max_tokens, body.temperature, body.top_p, body.n, body.seed,
                     (body.top_logprobs or 0) if body.logprobs else None, logit_bias,
                     stops(body.stop), messages=messages)


@dataclass(frozen=True)
class ChatForm:
    """How a chat completion is worded, whole or streamed; ``head`` opens every chunk."""

    served: LMServing
    body: ChatRequest
    req: LMRequest
    head: dict[str, Any]

    def response(self, choices: list[LMChoice], decision: Decision, as_ids: bool
                 ) -> dict[str, Any]:
        return {**self.head, "object": "chat.completion",
                "choices": [self.choice(i, c, as_ids) for i, c in enumerate(choices)],
                "usage": usage(decision, choices)}

    def choice(self, i: int, c: LMChoice, as_ids: bool) -> dict[str, Any]:
        lp = None
        if c.logprobs is not None and c.top_logprobs is not None:
            lp = {"content": [self._content(t, v, top, as_ids) for t, v, top in
                              zip(c.tokens, c.logprobs, c.top_logprobs, strict=True)]}
        return {"index": i, "message": {"role": "assistant", "content": self.served.text(c)},
                "logprobs": lp, "finish_reason": c.finish_reason}

    def _entry(self, t: int, v: float, as_ids: bool) -> dict[str, Any]:
        text = self.served.token(t, as_ids)
        return {"token": text, "logprob": v, "bytes": list(text.encode())}

    def _content(self, t: int, v: float, top: list[tuple[int, float]], as_ids: bool
                 ) -> dict[str, Any]:
        return {**self._entry(t, v, as_ids),
                "top_logprobs": [self._entry(a, b, as_ids) for a, b in top]}

    def opening(self) -> list[dict[str, Any]]:
        """From a local model, the assistant's role first (one conversation, n choices)."""
        if hasattr(self.served.lm, "complete"):
            return []
        return [{**self.head, "choices": [{
            "index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
            "finish_reason": None}]} for i in range(self.req.n)]

    def token(self, d: Delta, as_ids: bool) -> dict[str, Any]:
        logprobs = None if d.logprobs is None or not d.tokens else {
            "content": [self._content(t, v, top, as_ids) for t, v, top in
                        zip(d.tokens, d.logprobs, d.tops or [], strict=True)]}
        return {**self.head, "choices": [{"index": d.choice, "delta": {"content": d.text},
                                          "logprobs": logprobs,
                                          "finish_reason": d.finish_reason}]}

    def whole(self, choices: list[LMChoice], as_ids: bool) -> list[dict[str, Any]]:
        return [{**self.head, "choices": [{"index": it["index"], "delta": it["message"],
                                           "logprobs": it["logprobs"],
                                           "finish_reason": it["finish_reason"]}]}
                for it in (self.choice(i, c, as_ids) for i, c in enumerate(choices))]

    def closing(self, choices: list[LMChoice], decision: Decision) -> dict[str, Any] | None:
        return usage_chunk(self.head, self.body.stream_options, choices, decision)
