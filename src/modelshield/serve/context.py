"""What every route of one gateway app shares: the Shields by model name and the metrics.

``create_app`` puts one :class:`Gateway` on ``app.state``; a route asks for it by
declaring a parameter of type :data:`GatewayDep`. A refusal is raised as
:class:`~modelshield.errors.Denied` (a field at fault named by its ``X-Error-Param``
header) and answered, and counted, in one place (:mod:`modelshield.serve.errors`).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from modelshield.answer import Answer
from modelshield.defenses.shield import LOOP_MAX_ROWS, MAX_KEY_CHARS, Decision, Shield
from modelshield.errors import Denied
from modelshield.serve.errors import shown
from modelshield.serve.metrics import Metrics
from modelshield.serve.routing import needs_at


@dataclass(frozen=True)
class Gateway:
    """The served models (``shields`` by name, in the config's order) and the metrics."""

    shields: Mapping[str, Shield]
    metrics: Metrics

    @property
    def first(self) -> Shield:
        """The first model's Shield, which holds the gateway-wide settings: keys, proxies,
        terms."""
        return next(iter(self.shields.values()))

    def shield(self, model: str) -> Shield:
        """The Shield of ``model``, or a 404 ``unknown_model``."""
        found = self.shields.get(model)
        if found is None:
            raise refusal(404, "unknown_model", f"Unknown model {shown(model)}; this gateway "
                          f"serves {', '.join(map(repr, self.shields))}.", "model")
        return found

    async def usable(self, request: Request, model: str) -> Shield:
        """The Shield of ``model``, if the request's key holds a tier it offers (else the
        refusal: 401, 403 ``unknown_tier``, recorded)."""
        target = self.shield(model)
        await run_in_threadpool(target.authenticate, api_key(request), client_ip(request))
        return target

    def models_for(self, key: str | None) -> list[str]:
        """The models whose tiers include ``key``'s (none without a usable key)."""
        record = None if key is None or len(key) > MAX_KEY_CHARS else \
            self.first.store.lookup(key)
        if record is None or not record.usable(self.first.clock()):
            return []
        return [name for name, s in self.shields.items() if record.tier in s.config.tiers]

    def count(self, request: Request, status: int) -> None:
        """Count ``request`` as answered with ``status``, under its route's label."""
        self.metrics.count(metric(request), status)

    async def classify(self, request: Request, model: str, inputs: Any
                       ) -> tuple[Answer, Decision]:
        """Rows through ``model``'s Shield (:meth:`answer`): (answer, decision)."""
        return await self.answer(model, api_key(request), client_ip(request), inputs,
                                 metric(request))

    async def answer(self, model: str, key: str | None, ip: str, inputs: Any, label: str
                     ) -> tuple[Answer, Decision]:
        """Rows through ``model``'s Shield for the holder of ``key`` at ``ip``, counted
        under the route ``label``: on the event loop where the Shield runs there
        (``on_loop``) and the request is small, else on a request thread."""
        target = self.shield(model)
        start = time.perf_counter()
        try:
            if target.on_loop and _rows(inputs) <= LOOP_MAX_ROWS:
                answer, decision = await target.handle_on_loop(key, inputs, ip)
            else:
                answer, decision = await off_loop(target.handle, key, inputs, ip)
        except OverflowError:
            raise refusal(422, "invalid_inputs", "inputs must be numbers that fit a 64-bit "
                          "float", "inputs") from None
        self.metrics.answered(label, len(answer), (f.detector for f in decision.flags),
                              time.perf_counter() - start)
        return answer, decision


def _rows(inputs: Any) -> int:
    """How many rows a request sends (any object: the Shield checks the shape)."""
    try:
        return len(inputs)
    except TypeError:
        return 1


T = TypeVar("T")

_REQUEST_THREADS = ThreadPoolExecutor(max_workers=40, thread_name_prefix="shield")
"""The threads a request's Shield runs on (as many as anyio's default pool)."""


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a request thread, in a copy of the caller's context (as
    ``run_in_threadpool``). A plain executor's hop costs about a third of the CPU of
    anyio's (its queue's condition variable and its capacity limiter), on every answer."""
    call = contextvars.copy_context().run
    return await asyncio.get_running_loop().run_in_executor(_REQUEST_THREADS, call, fn, *args)


async def gateway(request: Request) -> Gateway:
    """The app's :class:`Gateway` (a dependency: ``async``, so no thread is taken)."""
    found: Gateway = request.app.state.gateway
    return found


GatewayDep = Annotated[Gateway, Depends(gateway)]


def refusal(status: int, code: str, message: str, param: str | None = None,
            headers: Mapping[str, str] | None = None) -> Denied:
    """A refusal to raise from a route; ``param`` names the request field at fault."""
    extra = {} if param is None else {"X-Error-Param": param}
    return Denied(status, code, message, {**extra, **(headers or {})})


def metric(request: Request) -> str:
    """The ``/metrics`` label of ``request``'s route."""
    return needs_at(request.app.router.routes, request.scope).metric


def api_key(request: Request) -> str | None:
    """The request's API key: ``Authorization: Bearer KEY`` or ``X-API-Key``."""
    return key_from(request.headers.get("authorization", ""), request.headers.get("x-api-key"))


def scope_key(scope: Mapping[str, Any]) -> str | None:
    """The API key of an ASGI request, read as :func:`api_key` reads it: each header's
    first occurrence (a second ``Authorization`` does not name another account)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.lower(), value)
    return key_from(found.get(b"authorization", b"").decode("latin-1"),
                    found.get(b"x-api-key", b"").decode("latin-1") or None)


def key_from(authorization: str, x_api_key: str | None) -> str | None:
    """The API key of these two header values, or None."""
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return x_api_key or None


def client_ip(request: Request) -> str:
    """The client's address (behind a trusted proxy: the forwarded one)."""
    return request.client.host if request.client else "unknown"
