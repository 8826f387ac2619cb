"""The gateway: the Shield served over HTTP (FastAPI on uvicorn).

Routes:

* ``POST /v1/models/{name}/predict`` — ``{"inputs": [[...], ...]}`` → labels and whatever
  scores the key's tier lets out (:mod:`.routes_v1`, with ``GET /v1/account``);
* ``POST /v2/models/{name}/infer`` — the Open Inference Protocol (KServe v2), so existing
  clients work; ``GET /v2/models/{name}`` (metadata: input shape, classes, domain),
  ``GET /v2/models/{name}/ready``, ``GET /v2`` (:mod:`.routes_v2`);
* the OpenAI-compatible routes of a language model (:mod:`.openai`);
* ``GET /v2/health/ready``, ``GET /v2/health/live``, ``GET /metrics`` (Prometheus),
  ``GET /terms``, ``GET /docs`` (OpenAPI) (:mod:`.ops`).

Each route declares whether it needs a key (the default is yes), its label in
``/metrics`` and how it refuses an invalid body (:mod:`.routing`). Every refusal is a JSON
body ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status
(:mod:`.errors`), on every route, for every fault: the Shield's refusals, bodies that do
not parse, unknown routes and methods, and bugs (500, counted in ``/metrics`` like any
other status). The key is checked before the body is read (:class:`.middleware.AuthGate`),
and a refusal is recorded in the audit log as a refusal.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from modelshield.defenses.shield import Shield
from modelshield.serve import openai, ops, routes_v1, routes_v2
from modelshield.serve.context import Gateway
from modelshield.serve.errors import ERROR_RESPONSES, add_handlers
from modelshield.serve.fastpath import FastPredict
from modelshield.serve.metrics import Metrics
from modelshield.serve.middleware import AuthGate, BodyLimit, CatchBugs, ForwardedAddress
from modelshield.serve.routing import GatewayRouter

ROUTERS: tuple[GatewayRouter, ...] = (routes_v1.router, routes_v2.router, *openai.ROUTERS,
                                      ops.router, ops.docs)
"""Every route the gateway serves, by family."""


def create_app(shields: Shield | Sequence[Shield], max_body_bytes: int = 8 * 2**20,
               fast_path: bool = True) -> FastAPI:
    """The gateway app around one Shield per served model (``serve.factory.build_gateway``
    builds them from a config); bodies over ``max_body_bytes`` get a 413. ``fast_path``:
    well-formed predict requests skip FastAPI's routing and validation (:mod:`.fastpath`;
    off, every request takes the route: the same answers, for comparison)."""
    served = [shields] if isinstance(shields, Shield) else list(shields)
    gateway = Gateway({s.spec.name: s for s in served},
                      Metrics(audit={id(s.store): s.store for s in served}.values()))
    # FastAPI's own documentation routes are left out: ops.docs declares them.
    app = FastAPI(title="modelshield gateway", version="0.1.0",
                  description="Models behind layered defenses against extraction.",
                  responses=ERROR_RESPONSES, openapi_url=None, docs_url=None, redoc_url=None,
                  routes=[route for router in ROUTERS for route in router.routes],
                  lifespan=_closing(served))
    app.state.gateway = gateway
    add_handlers(app)
    _add_middleware(app, gateway, max_body_bytes, fast_path)
    return app


def _closing(shields: list[Shield]) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: at shutdown each Shield runs the detection still pending and
    closes its stores (the audit log's writer commits what is queued first)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for shield in shields:
            await run_in_threadpool(shield.close)

    return lifespan


def _add_middleware(app: FastAPI, gateway: Gateway, max_body_bytes: int, fast_path: bool
                    ) -> None:
    """Outermost last: the client's address first, then the body's size, then the key,
    then the predict route's fast path (:mod:`.fastpath`)."""
    routes, metrics, shield = app.router.routes, gateway.metrics, gateway.first
    if fast_path:
        app.add_middleware(FastPredict, gateway=gateway)
    app.add_middleware(AuthGate, shield=shield, metrics=metrics, routes=routes)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if shield.config.trusted_proxies:
        app.add_middleware(ForwardedAddress, metrics=metrics, routes=routes)
        app.add_middleware(ProxyHeadersMiddleware,
                           trusted_hosts=list(shield.config.trusted_proxies))
    app.add_middleware(CatchBugs, metrics=metrics, routes=routes)
