"""The gateway's ASGI middleware, outermost first: :class:`CatchBugs` (a bug is a counted
JSON 500), uvicorn's ``ProxyHeadersMiddleware`` and :class:`ForwardedAddress` (only with
``trusted_proxies``),
:class:`BodyLimit` (a 413 before a large body is read), :class:`AuthGate` (the key before
the body)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelshield.defenses.shield import MAX_KEY_CHARS, Shield
from modelshield.errors import Denied
from modelshield.serve.context import scope_key
from modelshield.serve.errors import error_response
from modelshield.serve.metrics import Metrics
from modelshield.serve.routing import declared, needs_at

log = logging.getLogger("modelshield.gateway")


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a 413 before anything parses them
    (by Content-Length, and by counting the bytes of bodies sent without one)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit():
            if int(length) > self.max_bytes:
                await self._too_large(send, scope["path"])
            else:  # the server holds the body to its declared length: nothing to count
                await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app on a body sent without a length, ended where it passes the limit; the
        app's answer is then replaced by the 413."""
        seen, exceeded, replied = 0, False, False

        async def counted() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # end the body here; the app's answer is replaced
                exceeded = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message: Message) -> None:
            nonlocal replied
            if not exceeded:
                await send(message)
            elif not replied:
                replied = True
                await self._too_large(send, scope["path"])

        await self.app(scope, counted, guarded)

    async def _too_large(self, send: Send, path: str = "") -> None:
        body = error_response(413, "body_too_large",
                              f"request bodies are limited to {self.max_bytes} bytes", path=path)
        await body({"type": "http"}, nothing, send)


class ForwardedAddress:
    """Behind a trusted proxy, the client's address comes from ``X-Forwarded-For``: one
    that is not an IP address is refused (400) before it reaches a limit or the log."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_ip(scope.get("client")):
            self.metrics.count(needs_at(self.routes, scope).metric, 400)
            response = error_response(400, "invalid_forwarded_address", "X-Forwarded-For: "
                                      "the client's address must be an IPv4 or IPv6 address.",
                                      "X-Forwarded-For", path=scope["path"])
            await response(scope, nothing, send)
            return
        await self.app(scope, receive, send)


def _is_ip(client: Any) -> bool:
    """Whether the ASGI ``client`` (host, port) names an IP address (or is absent)."""
    if not client:
        return True
    try:
        ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return True


class CatchBugs:
    """A bug, not a refusal: logged with its traceback and answered as a JSON 500 that
    ``/metrics`` counts, on a connection that stays usable (an exception that reached the
    server would close it)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:  # the client left, or its body missed its deadline
            self.metrics.count(needs_at(self.routes, scope).metric, 408)
        except Exception as exc:
            log.exception("bug on %s %s", scope["method"], scope["path"])
            if started:
                raise
            self.metrics.count(needs_at(self.routes, scope).metric, 500)
            response = error_response(500, "internal_error", "The gateway failed on this "
                                      f"request ({type(exc).__name__}); it is logged.",
                                      path=scope["path"])
            await response(scope, nothing, send)


class AuthGate:
    """Check the API key of every route that needs one before anything reads the body:
    a keyless or wrongly keyed request of any size costs a header read and (for a key not
    seen in the last second) one indexed lookup. The route checks the key again, from the
    store's cache.

    A route needs a key unless it is declared public (:mod:`modelshield.serve.routing`).
    A request that reaches no route (a 404 or 405) needs one if it is a POST: its body is
    never read without one."""

    def __init__(self, app: ASGIApp, shield: Shield, metrics: Metrics,
                 routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.shield = shield
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            needs, routed = declared(self.routes, scope)
            if needs.key if routed else scope["method"] == "POST":
                refused = await self._refusal(scope)
                if refused is not None:
                    self.metrics.count(needs.metric, refused.status)
                    response = error_response(refused.status, refused.code, str(refused),
                                              None, refused.headers, scope["path"])
                    await response(scope, nothing, send)
                    return
        await self.app(scope, receive, send)

    async def _refusal(self, scope: Scope) -> Denied | None:
        """Why the request's key is refused (the refusal recorded), or None."""
        key = scope_key(scope)
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        try:
            if not self._fresh(key):  # a lookup, or a refusal's record: off the loop
                await run_in_threadpool(self.shield.authenticate, key, ip, False)
        except Denied as exc:
            return exc
        return None

    def _fresh(self, key: str | None) -> bool:
        """A usable key the store has cached: nothing to wait for, no thread to hop to."""
        if key is None or len(key) > MAX_KEY_CHARS:
            return False
        record = self.shield.store.cached(key)
        return record is not None and record.usable(self.shield.clock())


async def nothing() -> Message:
    """An empty request body, for a response sent in the middleware's place."""
    return {"type": "http.request", "body": b"", "more_body": False}
