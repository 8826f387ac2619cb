"""The OpenAI-compatible surface of the gateway: ``/v1/completions``, ``/v1/chat/completions``
and ``/v1/models``, for a language model behind the Shield.

Requests and responses follow the OpenAI API (and vLLM's extension
``return_tokens_as_token_ids``, which names each token ``token_id:N`` so that tokens that
decode to the same text stay apart, and ``return_token_ids``, which adds the sampled token
ids to each choice whether or not logprobs are on). Errors are OpenAI-style:
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status. With ``stream: true``
the answer comes as server-sent events: from a local model a token at a time (the request's
admission is recorded before the first token leaves, the whole completion when it ends);
from an upstream server a chunk per choice, after its record is committed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from modelshield.answer import LMChoice, LMRequest
from modelshield.defenses.llm import Delta
from modelshield.defenses.shield import Shield
from modelshield.errors import Denied, OracleError
from modelshield.serve.errors import ERROR_RESPONSES, error_response

Prompt = str | list[str] | list[int] | list[list[int]]


class _Request(BaseModel):
    """A field this gateway does not know is refused (400, naming it), never ignored."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    include_usage: bool = False


# Parameters of the OpenAI API the gateway does not implement, with the value that means
# "not used": a request that sets another value is refused with 400 and the name.
_UNSUPPORTED = {"best_of": (None, 1), "suffix": (None,), "presence_penalty": (None, 0),
                "frequency_penalty": (None, 0), "tools": (None,), "tool_choice": (None,),
                "functions": (None,), "function_call": (None,), "response_format": (None,),
                "parallel_tool_calls": (None,)}


class CompletionRequest(_Request):
    model: str
    prompt: Prompt
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = None
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False
    user: str | None = None
    best_of: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class TokenizeRequest(_Request):
    model: str
    prompt: str
    add_special_tokens: bool = False


class DetokenizeRequest(_Request):
    model: str
    tokens: list[int]


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text; a list of parts is joined (only text parts are taken)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Request):
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
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_tokens_as_token_ids: bool = False
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: Any = None
    parallel_tool_calls: bool | None = None


def openai_error(status: int, message: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    return error_response(status, code, message, param, headers)


def unsupported(body: BaseModel) -> str | None:
    """The first parameter ``body`` sets that the gateway does not implement."""
    for name, unset in _UNSUPPORTED.items():
        if name in type(body).model_fields and getattr(body, name) not in unset:
            return name
    return None


def _stops(stop: str | list[str] | None) -> list[str]:
    return [s for s in ([stop] if isinstance(stop, str) else list(stop or [])) if s]


@dataclass(frozen=True)
class Handlers:
    """One model's OpenAI-compatible handlers; the router picks them by ``model``."""

    entry: Callable[[], dict[str, Any]]
    tokenize: Callable[[TokenizeRequest, Request], Awaitable[Any]]
    detokenize: Callable[[DetokenizeRequest, Request], Awaitable[Any]]
    completions: Callable[[CompletionRequest, Request], Awaitable[Any]]
    chat: Callable[[ChatRequest, Request], Awaitable[Any]]


def openai_router(shields: dict[str, Shield], count: Callable[[str, int], None]) -> APIRouter:
    """The OpenAI-compatible routes for the gateway's models (by the request's ``model``);
    ``count(route, status)`` feeds the metrics."""
    router = APIRouter(tags=["OpenAI-compatible"], responses=ERROR_RESPONSES)
    by_name = {name: handlers(shield, count) for name, shield in shields.items()}
    lms = [name for name, shield in shields.items() if shield.lm is not None]

    def pick(model: str, route: str) -> Handlers | JSONResponse:
        found = by_name.get(model)
        if found is None:
            count(route, 404)
            return openai_error(404, f"The model {model!r} does not exist; this gateway "
                                f"serves {', '.join(map(repr, by_name))}.", "model_not_found",
                                "model")
        return found

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The language models served (a key is needed, as with OpenAI's API)."""
        return {"object": "list", "data": [by_name[name].entry() for name in lms]}

    @router.get("/v1/models/{model_id}")
    async def model_entry(model_id: str) -> Any:
        h = pick(model_id, "models")
        return h if isinstance(h, JSONResponse) else h.entry()

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request) -> Any:
        """vLLM's tokenizer route: text to token ids (a valid key is needed; no query is
        spent)."""
        h = pick(body.model, "tokenize")
        return h if isinstance(h, JSONResponse) else await h.tokenize(body, request)

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request) -> Any:
        """vLLM's detokenizer route: token ids to text."""
        h = pick(body.model, "detokenize")
        return h if isinstance(h, JSONResponse) else await h.detokenize(body, request)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        h = pick(body.model, "completions")
        return h if isinstance(h, JSONResponse) else await h.completions(body, request)

    @router.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Any:
        h = pick(body.model, "chat")
        return h if isinstance(h, JSONResponse) else await h.chat(body, request)

    return router


def handlers(shield: Shield, count: Callable[[str, int], None]) -> Handlers:
    """The OpenAI-compatible handlers of ``shield``'s model."""
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
        refused = precheck(req, route, model)
        if refused is not None:
            return refused
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

    def precheck(req: LMRequest, route: str, model: str) -> JSONResponse | None:
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
        return None

    async def stream(request: Request, req: LMRequest, route: str, model: str, as_ids: bool,
                     form: StreamForm) -> Any:
        """The request through the Shield as server-sent events, a token at a time for a
        local model (the admission is recorded before the first token leaves, the whole
        completion when it ends), or a chunk per choice from an upstream server."""
        refused = precheck(req, route, model)
        if refused is not None:
            return refused
        key, ip = _api_key(request), request.client.host if request.client else "unknown"
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()

        def put(item: tuple[str, Any, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                choices, decision = shield.handle_completion(
                    key, req, ip, on_step=lambda d, deltas: put(("step", d, deltas)))
                put(("end", decision, choices))
            except Denied as exc:
                put(("error", exc, None))
            except Exception as exc:  # a bug: raised in the route (CatchBugs answers it)
                put(("bug", exc, None))

        task = asyncio.ensure_future(run_in_threadpool(work))
        kind, first, payload = await queue.get()
        if kind == "error":
            await task
            return refuse(first.status, str(first), first.code,
                          first.headers.get("X-Error-Param"), route, first.headers)
        if kind == "bug":
            await task
            raise first
        count(route, 200)

        async def events() -> AsyncIterator[str]:
            item: tuple[str, Any, Any] = (kind, first, payload)
            streamed, names_ok = False, as_ids
            for chunk in form.opening():
                yield _event(chunk)
            while item[0] in ("step", "end"):
                if item[0] == "step":
                    streamed = True
                    for d in item[2]:
                        yield _event(form.token(d, names_ok))
                else:
                    choices = item[2]
                    if not streamed:
                        names_ok = as_ids or not await name_tokens(choices, as_ids)
                        for chunk in form.whole(choices, names_ok):
                            yield _event(chunk)
                    last = form.closing(choices, item[1])
                    if last is not None:
                        yield _event(last)
                    break
                item = await queue.get()
            yield "data: [DONE]\n\n"
            await task

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers=first.headers)

    def token(t: int, as_ids: bool) -> str:
        lm = shield.lm
        return f"token_id:{t}" if as_ids or lm is None else lm.token_text(t)

    def usage(decision: Any, choices: list[LMChoice]) -> dict[str, int]:
        """Tokens billed: the prompts as the Shield answered them (a chat request's with its
        system prompt) and the completions."""
        prompt = decision.prompt_tokens
        completion = sum(len(c.tokens) for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def entry() -> dict[str, Any]:
        lm = shield.lm
        data: dict[str, Any] = {"id": name, "object": "model", "created": 0,
                                "owned_by": "modelshield"}
        if lm is not None:
            data.update(vocab_size=lm.vocab, context_length=lm.context)
        return data

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

    async def completions(body: CompletionRequest, request: Request) -> Any:
        route = "completions"
        lm = shield.lm
        refused = check_params(body, route)
        if refused is not None:
            return refused
        if body.echo and body.logprobs is not None:
            return refuse(400, "echo with logprobs would return the prompt's logprobs, which "
                          "this gateway does not give out; send one or the other.",
                          "unsupported_parameter", "echo", route)
        prompts = await offload(lambda: _prompts(body.prompt, lm.encode if lm else
                                                 (lambda s: [])), route)
        if isinstance(prompts, JSONResponse):
            return prompts
        logit_bias = bias(body.logit_bias, route)
        if isinstance(logit_bias, JSONResponse):
            return logit_bias
        req = LMRequest(prompts, body.max_tokens, body.temperature, body.top_p, body.n,
                        body.seed, body.logprobs, logit_bias, _stops(body.stop))
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": ident, "object": "text_completion", "created": created, "model": name}
        if body.stream:
            return await stream(request, req, route, body.model,
                                body.return_tokens_as_token_ids, StreamForm(
                                    opening=lambda: [{**head, "choices": [{
                                        "index": i, "text": lm.decode(req.prompts[i // req.n]),
                                        "logprobs": None, "finish_reason": None}]}
                                        for i in range(len(req.prompts) * req.n)]
                                    if body.echo and lm else [],
                                    token=lambda d, ids: {**head, "choices": [{
                                        "index": d.choice, "text": d.text,
                                        "logprobs": None if d.logprob is None else {
                                            "tokens": [token(d.token, ids)],
                                            "token_logprobs": [d.logprob],
                                            "top_logprobs": [{token(t, ids): v
                                                              for t, v in d.top or []}]},
                                        "finish_reason": d.finish_reason}]},
                                    whole=lambda cs, ids: [
                                        {**head, "choices": [choice(i, c, ids, echo=False)]}
                                        for i, c in enumerate(cs)],
                                    closing=lambda cs, d: {**head, "choices": [],
                                                           "usage": usage(d, cs)}
                                    if body.stream_options and body.stream_options.include_usage
                                    else None))
        out = await run(request, req, route, body.model, body.return_tokens_as_token_ids)
        if isinstance(out, JSONResponse):
            return out
        choices, decision, as_ids = out

        def choice(i: int, c: LMChoice, as_ids: bool, echo: bool = True) -> dict[str, Any]:
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
            prefix = lm.decode(req.prompts[c.prompt_index]) if echo and body.echo and lm else ""
            item = {"index": i, "text": prefix + text(c), "logprobs": lp,
                    "finish_reason": c.finish_reason}
            if body.return_token_ids:
                item["token_ids"] = c.tokens
            return item

        items = [choice(i, c, as_ids) for i, c in enumerate(choices)]
        return JSONResponse({"id": ident, "object": "text_completion", "created": created,
                             "model": name, "choices": items, "usage": usage(decision, choices)},
                            headers=decision.headers)

    def check_params(body: BaseModel, route: str) -> JSONResponse | None:
        param = unsupported(body)
        if param is None:
            return None
        return refuse(400, f"{param} is not supported by this gateway; leave it out.",
                      "unsupported_parameter", param, route)

    async def chat(body: ChatRequest, request: Request) -> Any:
        route = "chat"
        lm = shield.lm
        if lm is None:
            return refuse(404, f"{name!r} is not a language model.", "model_not_found",
                          "model", route)
        refused = check_params(body, route)
        if refused is not None:
            return refused
        logit_bias = bias(body.logit_bias, route)
        if isinstance(logit_bias, JSONResponse):
            return logit_bias
        if body.top_logprobs is not None and not body.logprobs:
            return refuse(400, "top_logprobs needs logprobs: true.", "invalid_value",
                          "top_logprobs", route)
        max_tokens = body.max_completion_tokens or body.max_tokens or 16
        # The Shield builds the prompt from the messages once the key is checked, with the
        # deployment's system prompt first.
        messages: list[tuple[str, str]] = [(m.role, m.text) for m in body.messages]
        req = LMRequest([], max_tokens, body.temperature,
                        body.top_p, body.n, body.seed,
                        (body.top_logprobs or 0) if body.logprobs else None, logit_bias,
                        _stops(body.stop), messages=messages)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": ident, "object": "chat.completion.chunk", "created": created,
                "model": name}

        def entry(t: int, v: float, as_ids: bool) -> dict[str, Any]:
            text = token(t, as_ids)
            return {"token": text, "logprob": v, "bytes": list(text.encode())}

        def content(t: int, v: float, top: list[tuple[int, float]], as_ids: bool
                    ) -> dict[str, Any]:
            return {**entry(t, v, as_ids), "top_logprobs": [entry(a, b, as_ids) for a, b in top]}

        def choice(i: int, c: LMChoice, as_ids: bool) -> dict[str, Any]:
            lp = None
            if c.logprobs is not None and c.top_logprobs is not None:
                lp = {"content": [content(t, v, top, as_ids) for t, v, top in
                                  zip(c.tokens, c.logprobs, c.top_logprobs, strict=True)]}
            return {"index": i, "message": {"role": "assistant", "content": text(c)},
                    "logprobs": lp, "finish_reason": c.finish_reason}

        if body.stream:
            def whole(cs: list[LMChoice], ids: bool) -> list[dict[str, Any]]:
                items = [choice(i, c, ids) for i, c in enumerate(cs)]
                return [{**head, "choices": [{"index": it["index"], "delta": it["message"],
                                              "logprobs": it["logprobs"],
                                              "finish_reason": it["finish_reason"]}]}
                        for it in items]

            return await stream(request, req, route, body.model,
                                body.return_tokens_as_token_ids, StreamForm(
                                    opening=lambda: [{**head, "choices": [{
                                        "index": i, "delta": {"role": "assistant",
                                                              "content": ""},
                                        "logprobs": None, "finish_reason": None}]}
                                        for i in range(req.n)]  # one conversation
                                    if not hasattr(lm, "complete") else [],
                                    token=lambda d, ids: {**head, "choices": [{
                                        "index": d.choice, "delta": {"content": d.text},
                                        "logprobs": None if d.logprob is None else {
                                            "content": [content(d.token, d.logprob,
                                                                d.top or [], ids)]},
                                        "finish_reason": d.finish_reason}]},
                                    whole=whole,
                                    closing=lambda cs, d: {**head, "choices": [],
                                                           "usage": usage(d, cs)}
                                    if body.stream_options and body.stream_options.include_usage
                                    else None))
        out = await run(request, req, route, body.model, body.return_tokens_as_token_ids)
        if isinstance(out, JSONResponse):
            return out
        choices, decision, as_ids = out
        items = [choice(i, c, as_ids) for i, c in enumerate(choices)]
        return JSONResponse({"id": ident, "object": "chat.completion", "created": created,
                             "model": name, "choices": items, "usage": usage(decision, choices)},
                            headers=decision.headers)

    return Handlers(entry=entry, tokenize=tokenize, detokenize=detokenize,
                    completions=completions, chat=chat)


def _prompts(prompt: Prompt, encode: Callable[[str], list[int]]) -> list[list[int]]:
    if isinstance(prompt, str):
        return [encode(prompt)]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return [encode(p) if isinstance(p, str) else list(p) for p in prompt]  # type: ignore[arg-type]


@dataclass(frozen=True)
class StreamForm:
    """How one route words a stream: its opening chunks, a token's chunk, the chunks of
    whole choices (from an upstream server), and the closing usage chunk (or None)."""

    opening: Callable[[], list[dict[str, Any]]]
    token: Callable[[Delta, bool], dict[str, Any]]
    whole: Callable[[list[LMChoice], bool], list[dict[str, Any]]]
    closing: Callable[[list[LMChoice], Any], dict[str, Any] | None]


def _event(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk)}\n\n"


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")
