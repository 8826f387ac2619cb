"""``stream: true``: the answer as server-sent events.

From a local model a token at a time: the request's admission is recorded before the
first token leaves, the whole completion when it ends. From an upstream server a chunk per
choice, after its record is committed. Each route words its chunks (:class:`StreamForm`);
the events are the same for every route.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from modelshield.answer import LMChoice, LMRequest
from modelshield.defenses.llm import Delta
from modelshield.defenses.shield import Decision, Shield
from modelshield.errors import Denied
from modelshield.serve.context import api_key, client_ip
from modelshield.serve.errors import error_type
from modelshield.serve.openai.protocol import StreamOptions
from modelshield.serve.openai.serving import LMServing, usage

log = logging.getLogger("modelshield.gateway")
DONE = "data: [DONE]\n\n"

Item = tuple[str, Any, Any]
"""What the Shield's thread reports: ("step", decision, deltas), ("end", decision,
choices), ("error", Denied, None) or ("bug", exception, None)."""


class StreamForm(Protocol):
    """How one route words a stream: its opening chunks, a token's chunk, the chunks of
    whole choices (from an upstream server), and the closing usage chunk (or None)."""

    def opening(self) -> list[dict[str, Any]]: ...

    def token(self, d: Delta, as_ids: bool) -> dict[str, Any]: ...

    def whole(self, choices: list[LMChoice], as_ids: bool) -> list[dict[str, Any]]: ...

    def closing(self, choices: list[LMChoice], decision: Decision) -> dict[str, Any] | None: ...


async def stream(served: LMServing, request: Request, req: LMRequest, model: str,
                 as_ids: bool, form: StreamForm) -> StreamingResponse:
    """The request through the Shield as server-sent events; a refusal before the first
    event is an error response."""
    served.precheck(req, model)
    queue, task, gone = _start(served.shield, api_key(request), req, client_ip(request))
    first = await queue.get()
    kind, value, _ = first
    if kind in ("error", "bug"):  # a bug is raised in the route (CatchBugs answers it)
        await task
        raise value
    served.gw.count(request, 200)
    events = _events(served, queue, task, first, form, as_ids, gone)
    return StreamingResponse(_guarded(served, request, events),
                             media_type="text/event-stream", headers=value.headers)


async def _guarded(served: LMServing, request: Request, events: AsyncIterator[str]
                   ) -> AsyncIterator[str]:
    """The events. A failure once the 200 has gone out ends the stream with an error event
    and ``[DONE]``, as vLLM ends one (the client sees why, not a dropped connection), and
    ``/metrics`` counts it under its own status beside the 200: a refusal's, or 500."""
    try:
        async for event in events:
            yield event
    except Denied as exc:
        served.gw.count(request, exc.status)
        yield _error_event(exc.status, exc.code, str(exc), exc.headers.get("X-Error-Param"))
        yield DONE
    except Exception:
        log.exception("bug in a stream on %s", request.url.path)
        served.gw.count(request, 500)
        yield _error_event(500, "internal_error", "The gateway failed during this stream; "
                           "what was sent before this event is incomplete.")
        yield DONE


def _error_event(status: int, code: str, message: str, param: str | None = None) -> str:
    return _event({"error": {"message": message, "type": error_type(status), "param": param,
                             "code": code}})


def _start(shield: Shield, key: str | None, req: LMRequest, ip: str
           ) -> tuple[asyncio.Queue[Item], asyncio.Future[None], threading.Event]:
    """Run the completion in a thread that reports each step on the queue, and stops
    generating once ``gone`` (the third value) is set: the reader hung up."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Item] = asyncio.Queue()
    gone = threading.Event()

    def put(item: Item) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def step(decision: Decision, deltas: list[Delta]) -> bool:
        put(("step", decision, deltas))
        return not gone.is_set()

    def work() -> None:
        try:
            choices, decision = shield.handle_completion(
                key, req, ip, on_step=step)
            put(("end", decision, choices))
        except Denied as exc:
            put(("error", exc, None))
        except Exception as exc:  # a bug: raised in the route
            put(("bug", exc, None))

    return queue, asyncio.ensure_future(run_in_threadpool(work)), gone


async def _events(served: LMServing, queue: asyncio.Queue[Item], task: asyncio.Future[None],
                  item: Item, form: StreamForm, as_ids: bool, gone: threading.Event
                  ) -> AsyncIterator[str]:
    """The events; a reader that hangs up (the generator is closed or cancelled before
    its end) sets ``gone``, and the Shield stops generating at its next step."""
    streamed, ended = False, False
    try:
        for chunk in form.opening():
            yield _event(chunk)
        while item[0] in ("step", "end"):
            if item[0] == "end":
                async for event in _ending(served, form, item[2], item[1], streamed, as_ids):
                    yield event
                break
            streamed = True
            for d in item[2]:
                yield _event(form.token(d, as_ids))
            item = await queue.get()
        if item[0] in ("error", "bug"):  # after the first event: _guarded words it
            raise item[1]
        yield DONE
        ended = True
    finally:
        if not ended:
            gone.set()
    await task


async def _ending(served: LMServing, form: StreamForm, choices: list[LMChoice],
                  decision: Decision, streamed: bool, as_ids: bool) -> AsyncIterator[str]:
    """The whole choices (unless they came token by token), then the usage chunk."""
    if not streamed:
        names_ok = as_ids or not await served.name_tokens(choices, as_ids)
        for chunk in form.whole(choices, names_ok):
            yield _event(chunk)
    last = form.closing(choices, decision)
    if last is not None:
        yield _event(last)


def _event(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk)}\n\n"


def usage_chunk(head: dict[str, Any], options: StreamOptions | None, choices: list[LMChoice],
                decision: Decision) -> dict[str, Any] | None:
    """The closing chunk with the usage, if the request's ``stream_options`` ask for it."""
    if options and options.include_usage:
        return {**head, "choices": [], "usage": usage(decision, choices)}
    return None
