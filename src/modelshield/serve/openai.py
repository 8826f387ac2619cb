"""The OpenAI-compatible surface of the gateway: ``/v1/completions``, ``/v1/chat/completions``
and ``/v1/models``, for a language model behind the Shield.

Requests and responses follow the OpenAI API (and vLLM's extension
``return_tokens_as_token_ids``, which names each token ``token_id:N`` so that tokens that
decode to the same text stay apart, and ``return_token_ids``, which adds the sampled token
ids to each choice whether or not logprobs are on). Errors are OpenAI-style:
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status. With ``stream: true``
the answer comes as server-sent events, after its audit record is committed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from modelshield.answer import LMChoice, LMRequest
from modelshield.defenses.shield import Shield
from modelshield.errors import Denied, OracleError

Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(BaseModel):
    model: str
    prompt: Prompt
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False
    user: str | None = None


class TokenizeRequest(BaseModel):
    model: str
    prompt: str
    add_special_tokens: bool = False


class DetokenizeRequest(BaseModel):
    model: str
    tokens: list[int]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    return_tokens_as_token_ids: bool = False
    user: str | None = None


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The plain-text chat template of the built-in models (they have no chat tokens)."""
    return "".join(f"<|{m.role}|>\n{m.content}\n" for m in messages) + "<|assistant|>\n"


def openai_error(status: int, message: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(status, "invalid_request_error" if status < 500
                                         else "server_error")
    headers = {k: v for k, v in (headers or {}).items() if k != "X-Error-Param"}
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}}, status_code=status, headers=headers)


def add_openai_routes(app: FastAPI, shield: Shield,
                      count: Callable[[str, int], None]) -> None:
    """Mount the OpenAI-compatible routes; ``count(route, status)`` feeds the metrics."""
    name = shield.spec.name

    def refuse(status: int, message: str, code: str, param: str | None, route: str,
               headers: dict[str, str] | None = None) -> JSONResponse:
        count(route, status)
        return openai_error(status, message, code, param, headers)

    def bias(raw: dict[str, float] | None, route: str) -> dict[int, float] | JSONResponse:
        out = {}
        for k, v in (raw or {}).items():
            try:
                out[int(k)] = float(v)
            except ValueError:
                return refuse(400, f"logit_bias keys must be token ids; got {k!r}.",
                              "invalid_value", "logit_bias", route)
        return out

    async def run(request: Request, req: LMRequest, route: str, model: str, as_ids: bool
                  ) -> tuple[list[LMChoice], Any, bool] | JSONResponse:
        """The request through the Shield: (choices, decision, whether to name tokens by
        id), or the error response."""
        if model != name:
            return refuse(404, f"The model {model!r} does not exist; this gateway serves "
                          f"{name!r}.", "model_not_found", "model", route)
        lm = shield.lm
        if lm is None:
            return refuse(404, f"{name!r} is not a language model.", "model_not_found",
                          "model", route)
        too_long = [len(p) + req.max_tokens for p in req.prompts
                    if len(p) + req.max_tokens > lm.context]
        if too_long:
            return refuse(400, f"This model's maximum context length is {lm.context} tokens; "
                          f"the request asks for {too_long[0]} (prompt plus max_tokens).",
                          "context_length_exceeded", "max_tokens", route)
        key = _api_key(request)
        ip = request.client.host if request.client else "unknown"
        try:
            choices, decision = await run_in_threadpool(shield.handle_completion, key, req, ip)
        except Denied as exc:
            return refuse(exc.status, str(exc), exc.code, exc.headers.get("X-Error-Param"),
                          route, exc.headers)
        count(route, 200)
        if not await name_tokens(choices, as_ids):
            as_ids = True  # the upstream could not name the tokens: give their ids
        return choices, decision, as_ids

    def token(t: int, as_ids: bool) -> str:
        lm = shield.lm
        return f"token_id:{t}" if as_ids or lm is None else lm.token_text(t)

    def usage(req: LMRequest, choices: list[LMChoice]) -> dict[str, int]:
        prompt = sum(len(p) for p in req.prompts)
        completion = sum(len(c.tokens) for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        lm = shield.lm
        data: dict[str, Any] = {"id": name, "object": "model", "created": 0,
                                "owned_by": "modelshield"}
        if lm is not None:
            data.update(vocab_size=lm.vocab, context_length=lm.context)
        return {"object": "list", "data": [data]}

    async def name_tokens(choices: list[LMChoice], as_ids: bool) -> bool:
        """Fetch the token texts a response will name before it is built (an upstream
        model is asked over HTTP, so not on the event loop). False if the upstream could
        not say them: the response then names tokens ``token_id:N``."""
        lm = shield.lm
        if not as_ids and lm is not None and hasattr(lm, "complete"):
            wanted = {t for c in choices for top in (c.top_logprobs or []) for t, _ in top}
            wanted.update(t for c in choices if c.logprobs is not None for t in c.tokens)
            try:
                await run_in_threadpool(lambda: [lm.token_text(t) for t in sorted(wanted)])
            except OracleError:
                return False
        return True

    async def offload(fn: Callable[[], Any], route: str, param: str = "prompt") -> Any:
        """Run ``fn`` off the event loop (an upstream model tokenizes over HTTP); an
        upstream failure becomes an error response."""
        try:
            return await run_in_threadpool(fn)
        except OracleError as exc:
            return refuse(getattr(exc, "client_status", 502), str(exc), "upstream_error",
                          param, route)

    def text(c: LMChoice) -> str:
        lm = shield.lm
        return c.text if c.text is not None else (lm.decode(c.tokens) if lm else "")

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request) -> Any:
        """vLLM's tokenizer route: text to token ids (a valid key is needed; no query is
        spent)."""
        lm = shield.lm
        refused = await check(request, body.model, "tokenize")
        if refused is not None:
            return refused
        ids = await offload(lambda: [lm.encode(body.prompt)], "tokenize")
        if isinstance(ids, JSONResponse):
            return ids
        return {"tokens": ids[0], "count": len(ids[0]), "max_model_len": lm.context}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request) -> Any:
        """vLLM's detokenizer route: token ids to text."""
        lm = shield.lm
        refused = await check(request, body.model, "detokenize")
        if refused is not None:
            return refused
        if any(not 0 <= t < lm.vocab for t in body.tokens):
            return refuse(400, f"token ids must be in [0, {lm.vocab}).", "invalid_value",
                          "tokens", "detokenize")
        out = await offload(lambda: lm.decode(body.tokens), "detokenize", "tokens")
        return out if isinstance(out, JSONResponse) else {"prompt": out}

    async def check(request: Request, model: str, route: str) -> JSONResponse | None:
        if model != name or shield.lm is None:
            return refuse(404, f"The model {model!r} does not exist; this gateway serves "
                          f"{name!r}.", "model_not_found", "model", route)
        try:
            await run_in_threadpool(shield.account, _api_key(request))
        except Denied as exc:
            return refuse(exc.status, str(exc), exc.code, None, route, exc.headers)
        return None

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        route = "completions"
        lm = shield.lm
        prompts = await offload(lambda: _prompts(body.prompt, lm.encode if lm else
                                                 (lambda s: [])), route)
        if isinstance(prompts, JSONResponse):
            return prompts
        logit_bias = bias(body.logit_bias, route)
        if isinstance(logit_bias, JSONResponse):
            return logit_bias
        req = LMRequest(prompts, body.max_tokens, body.temperature, body.top_p, body.n,
                        body.seed, body.logprobs, logit_bias)
        out = await run(request, req, route, body.model, body.return_tokens_as_token_ids)
        if isinstance(out, JSONResponse):
            return out
        choices, decision, as_ids = out
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def choice(i: int, c: LMChoice) -> dict[str, Any]:
            lp = None
            if c.logprobs is not None and c.top_logprobs is not None:
                texts = [token(t, as_ids) for t in c.tokens]
                offsets, pos = [], 0
                for t in texts:
                    offsets.append(pos)
                    pos += len(t)
                lp = {"tokens": texts, "token_logprobs": c.logprobs, "text_offset": offsets,
                      "top_logprobs": [{token(t, as_ids): v for t, v in top}
                                       for top in c.top_logprobs]}
            item = {"index": i, "text": text(c), "logprobs": lp,
                    "finish_reason": c.finish_reason}
            if body.return_token_ids:
                item["token_ids"] = c.tokens
            return item

        items = [choice(i, c) for i, c in enumerate(choices)]
        if body.stream:
            return _sse([{"id": ident, "object": "text_completion", "created": created,
                          "model": name, "choices": [item]} for item in items],
                        decision.headers)
        return JSONResponse({"id": ident, "object": "text_completion", "created": created,
                             "model": name, "choices": items, "usage": usage(req, choices)},
                            headers=decision.headers)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Any:
        route = "chat"
        lm = shield.lm
        if lm is None:
            return refuse(404, f"{name!r} is not a language model.", "model_not_found",
                          "model", route)
        logit_bias = bias(body.logit_bias, route)
        if isinstance(logit_bias, JSONResponse):
            return logit_bias
        if body.top_logprobs is not None and not body.logprobs:
            return refuse(400, "top_logprobs needs logprobs: true.", "invalid_value",
                          "top_logprobs", route)
        max_tokens = body.max_completion_tokens or body.max_tokens or 16
        prompts = await offload(lambda: [lm.encode(chat_prompt(body.messages))], route)
        if isinstance(prompts, JSONResponse):
            return prompts
        req = LMRequest(prompts, max_tokens, body.temperature,
                        body.top_p, body.n, body.seed,
                        (body.top_logprobs or 0) if body.logprobs else None, logit_bias)
        out = await run(request, req, route, body.model, body.return_tokens_as_token_ids)
        if isinstance(out, JSONResponse):
            return out
        choices, decision, as_ids = out
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def entry(t: int, v: float) -> dict[str, Any]:
            text = token(t, as_ids)
            return {"token": text, "logprob": v, "bytes": list(text.encode())}

        def choice(i: int, c: LMChoice) -> dict[str, Any]:
            lp = None
            if c.logprobs is not None and c.top_logprobs is not None:
                lp = {"content": [{**entry(t, v), "top_logprobs": [entry(a, b) for a, b in top]}
                                  for t, v, top in zip(c.tokens, c.logprobs, c.top_logprobs,
                                                       strict=True)]}
            return {"index": i, "message": {"role": "assistant", "content": text(c)},
                    "logprobs": lp, "finish_reason": c.finish_reason}

        items = [choice(i, c) for i, c in enumerate(choices)]
        if body.stream:
            chunks = [{"id": ident, "object": "chat.completion.chunk", "created": created,
                       "model": name, "choices": [{"index": it["index"],
                                                   "delta": it["message"],
                                                   "logprobs": it["logprobs"],
                                                   "finish_reason": it["finish_reason"]}]}
                      for it in items]
            return _sse(chunks, decision.headers)
        return JSONResponse({"id": ident, "object": "chat.completion", "created": created,
                             "model": name, "choices": items, "usage": usage(req, choices)},
                            headers=decision.headers)


def _prompts(prompt: Prompt, encode: Callable[[str], list[int]]) -> list[list[int]]:
    if isinstance(prompt, str):
        return [encode(prompt)]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return [encode(p) if isinstance(p, str) else list(p) for p in prompt]  # type: ignore[arg-type]


def _sse(chunks: list[dict[str, Any]], headers: dict[str, str]) -> StreamingResponse:
    def events() -> Iterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")
