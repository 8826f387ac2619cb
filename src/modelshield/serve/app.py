"""The gateway: the Shield served over HTTP (FastAPI on uvicorn).

Routes:

* ``POST /v1/models/{name}/predict`` — ``{"inputs": [[...], ...]}`` → labels and whatever
  scores the key's tier lets out;
* ``POST /v2/models/{name}/infer`` — the Open Inference Protocol (KServe v2), so existing
  clients work;
* ``GET /v2/models/{name}`` (metadata: input shape, classes, domain), ``GET /v2/health/ready``,
  ``GET /v2/health/live``, ``GET /metrics`` (Prometheus), ``GET /docs`` (OpenAPI).

Every refusal is a JSON body ``{"error": {"message", "type", "param", "code"}}`` with a
4xx/5xx status (:mod:`modelshield.serve.errors`), on every route, for every fault: the
Shield's refusals, bodies that do not parse, unknown routes and methods, and bugs (500,
counted in ``/metrics`` like any other status). The key is checked before the body is read
(:class:`AuthGate`), and a refusal is recorded in the audit log as a refusal.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from modelshield.answer import Answer
from modelshield.defenses.shield import MAX_KEY_CHARS, Shield
from modelshield.errors import Denied
from modelshield.serve.errors import ERROR_RESPONSES, error_response
from modelshield.serve.openai import openai_router

log = logging.getLogger("modelshield.gateway")


class PredictRequest(BaseModel):
    inputs: list[list[float | None]] = Field(description="rows of features; null = missing")


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class V2Request(BaseModel):
    id: str | None = None
    inputs: list[V2Tensor]


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a 413 before anything parses them
    (by Content-Length, and by counting the bytes of bodies sent without one)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
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
        seen, exceeded, replied = 0, False, False

        async def counted() -> Any:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # end the body here; the app's answer is replaced
                exceeded = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message: Any) -> None:
            nonlocal replied
            if not exceeded:
                await send(message)
            elif not replied:
                replied = True
                await self._too_large(send, scope["path"])

        await self.app(scope, counted, guarded)

    async def _too_large(self, send: Any, path: str = "") -> None:
        body = error_response(413, "body_too_large",
                              f"request bodies are limited to {self.max_bytes} bytes", path=path)
        await body({"type": "http"}, _nothing, send)


class CatchBugs:
    """A bug, not a refusal: logged with its traceback and answered as a JSON 500 that
    ``/metrics`` counts, on a connection that stays usable (an exception that reached the
    server would close it)."""

    def __init__(self, app: Any, count: Any) -> None:
        self.app = app
        self.count = count

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.exception("bug on %s %s", scope["method"], scope["path"])
            if started:
                raise
            self.count(_route_of(scope["path"]), 500)
            response = error_response(500, "internal_error", "The gateway failed on this "
                                      f"request ({type(exc).__name__}); it is logged.",
                                      path=scope["path"])
            await response(scope, _nothing, send)


class AuthGate:
    """Check the API key of every route that needs one before anything reads the body:
    a keyless or wrongly keyed request of any size costs a header read and (for a key not
    seen in the last second) one indexed lookup. The route checks the key again, from the
    store's cache."""

    def __init__(self, app: Any, shield: Shield, count: Any) -> None:
        self.app = app
        self.shield = shield
        self.count = count

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and _needs_key(scope["method"], scope["path"]):
            headers = {k.lower(): v for k, v in scope["headers"]}
            key = _key_from(headers.get(b"authorization", b"").decode("latin-1"),
                            headers.get(b"x-api-key", b"").decode("latin-1"))
            client = scope.get("client")
            ip = client[0] if client else "unknown"
            try:
                if not self._fresh(key):  # a lookup, or a refusal's record: off the loop
                    await run_in_threadpool(self.shield.authenticate, key, ip, False)
            except Denied as exc:
                self.count(_route_of(scope["path"]), exc.status)
                response = error_response(exc.status, exc.code, str(exc), None, exc.headers,
                                          scope["path"])
                await response(scope, _nothing, send)
                return
        await self.app(scope, receive, send)

    def _fresh(self, key: str | None) -> bool:
        """A usable key the store has cached: nothing to wait for, no thread to hop to."""
        if key is None or len(key) > MAX_KEY_CHARS:
            return False
        record = self.shield.store.cached(key)
        return record is not None and record.usable(self.shield.clock())


async def _nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def create_app(shields: Shield | Sequence[Shield], max_body_bytes: int = 8 * 2**20) -> FastAPI:
    """The gateway app around one Shield per served model (``serve.factory.build_gateway``
    builds them from a config); bodies over ``max_body_bytes`` get a 413."""
    app = FastAPI(title="modelshield gateway", version="0.1.0",
                  description="Models behind layered defenses against extraction.",
                  responses=ERROR_RESPONSES)
    by_name = {s.spec.name: s for s in ([shields] if isinstance(shields, Shield)
                                        else shields)}
    shield = next(iter(by_name.values()))  # gateway-wide settings: keys, proxies, terms
    registry = CollectorRegistry()
    requests = Counter("modelshield_requests_total", "Requests by route and status",
                       ["route", "status"], registry=registry)
    rows = Counter("modelshield_rows_total", "Rows answered", registry=registry)
    flags = Counter("modelshield_flags_total", "Detector flags", ["detector"], registry=registry)
    latency = Histogram("modelshield_request_seconds", "Request latency", ["route"],
                        registry=registry)

    def count(route: str, status: int) -> None:
        requests.labels(route, str(status)).inc()

    # Outermost last: the client's address first, then the body's size, then the key.
    app.add_middleware(AuthGate, shield=shield, count=count)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if shield.config.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware,
                           trusted_hosts=list(shield.config.trusted_proxies))
    app.add_middleware(CatchBugs, count=count)

    def error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
              route: str = "other", param: str | None = None, path: str = "") -> JSONResponse:
        count(route, status)
        return error_response(status, code, message, param, headers,
                              path or ("/v2/" if route in ("infer", "v2") else ""))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        route = _route_of(request.url.path)
        path = request.url.path
        if first["type"] == "json_invalid":
            return error(400, "malformed_json", f"The body is not valid JSON: {first['msg']} "
                         f"at character {where}.", route=route, path=path)
        param = next((str(p) for p in first["loc"][1:2]), None) if first["loc"] else None
        return error(400 if route in _OPENAI_ROUTES else 422,
                     "invalid_value" if route in _OPENAI_ROUTES else "invalid_request",
                     f"{where}: {first['msg']}", route=route, param=param, path=path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed",
                400: "malformed_body"}.get(exc.status_code, "http_error")
        message = {404: f"No route {request.url.path}; see /docs for the routes.",
                   405: f"{request.method} is not allowed on {request.url.path}.",
                   400: "The body could not be read as JSON (invalid UTF-8, or nested too "
                        "deeply)."}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, code, message, dict(exc.headers or {}),
                     _route_of(request.url.path), path=request.url.path)

    def unknown(model: str, route: str = "other") -> JSONResponse:
        return error(404, "unknown_model", f"Unknown model {model!r}; this gateway serves "
                     f"{', '.join(map(repr, by_name))}.", route=route, param="model")

    async def serve(request: Request, model: str, inputs: Any, route: str) -> Any:
        target = by_name.get(model)
        if target is None:
            return unknown(model, route)
        start = time.perf_counter()
        key = _api_key(request)
        ip = request.client.host if request.client else "unknown"
        try:
            answer, decision = await run_in_threadpool(target.handle, key, inputs, ip)
        except Denied as exc:
            return error(exc.status, exc.code, str(exc), exc.headers, route)
        except OverflowError:
            return error(422, "invalid_inputs", "inputs must be numbers that fit a 64-bit "
                         "float", route=route, param="inputs")
        requests.labels(route, "200").inc()
        rows.inc(len(answer))
        for f in decision.flags:
            flags.labels(f.detector).inc()
        latency.labels(route).observe(time.perf_counter() - start)
        return answer, decision

    @app.post("/v1/models/{model}/predict", responses=ERROR_RESPONSES)
    async def predict(model: str, body: PredictRequest, request: Request) -> Any:
        inputs: Any = body.inputs
        with contextlib.suppress(ValueError):  # ragged rows: the Shield names the shape
            inputs = np.asarray(inputs, dtype=np.float64)  # null (None) reads as NaN
        out = await serve(request, model, inputs, "predict")
        if isinstance(out, JSONResponse):
            return out
        answer, decision = out
        return JSONResponse(_v1(answer, model), headers=decision.headers)

    @app.post("/v2/models/{model}/infer", responses=ERROR_RESPONSES,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": V2Request.model_json_schema()}}}})
    async def infer(model: str, request: Request) -> Any:
        # Parsed here, whatever the Content-Type: v2 clients (tritonclient) send none.
        try:
            body = V2Request.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid":
                return error(400, "malformed_json", f"The body is not valid JSON: "
                             f"{first['msg']}.", route="infer")
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return error(422, "invalid_request", f"{where}: {first['msg']}", route="infer",
                         param=str(first["loc"][0]) if first["loc"] else None)
        if len(body.inputs) != 1:
            return error(422, "invalid_request", "send exactly one input tensor", route="infer")
        t = body.inputs[0]
        data = _flat(t.data)  # the protocol allows the data flat or nested by row
        if data is None or len(t.shape) != 2 or t.shape[0] * t.shape[1] != len(data):
            return error(422, "invalid_shape", f"shape {t.shape} does not match the "
                         "data values", route="infer", param="inputs")
        try:
            x = np.asarray([np.nan if v is None else v for v in data],
                           dtype=np.float64).reshape(t.shape)
        except (TypeError, ValueError, OverflowError):
            return error(422, "invalid_inputs", "data must be numbers that fit a 64-bit "
                         "float", route="infer", param="inputs")
        out = await serve(request, model, x, "infer")
        if isinstance(out, JSONResponse):
            return out
        answer, decision = out
        return JSONResponse(_v2(answer, model, body.id), headers=decision.headers)

    @app.get("/v2/models/{model}/ready")
    async def model_ready(model: str) -> Any:
        """KServe v2 model readiness (200 for a model served here)."""
        if model not in by_name:
            return unknown(model, "v2")
        return {"name": model, "ready": True}

    @app.get("/v2/models/{model}")
    async def metadata(model: str) -> Any:
        target = by_name.get(model)
        if target is None:
            return unknown(model, "v2")
        spec = target.spec
        return {"name": model, "platform": "modelshield",
                "inputs": [{"name": "input-0", "datatype": "FP64",
                            "shape": [-1, spec.n_features]}],
                "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP64",
                             "shape": [-1, spec.n_classes]}],
                "parameters": {"classes": list(spec.classes), "low": spec.low.tolist(),
                               "high": spec.high.tolist(),
                               "accepts_missing": spec.accepts_missing,
                               "integer_features": spec.integer_features,
                               "terms_version": shield.config.terms_version}}

    @app.get("/v1/account")
    async def account(request: Request, model: str | None = None) -> Any:
        """The caller's own tier, output policy and limits on ``model`` (the first model
        served by default); checks a key without a query."""
        target = by_name.get(model) if model is not None else shield
        if target is None:
            return unknown(model or "", "account")
        try:
            return await run_in_threadpool(target.account, _api_key(request),
                                           request.client.host if request.client else "unknown")
        except Denied as exc:
            return error(exc.status, exc.code, str(exc), exc.headers, "account")

    app.include_router(openai_router(by_name, count))

    @app.get("/v2")
    async def server() -> dict[str, Any]:
        return {"name": "modelshield", "version": "0.1.0", "extensions": [],
                "models": list(by_name)}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/terms")
    async def terms() -> dict[str, str]:
        return {"version": shield.config.terms_version, "text": shield.config.terms}

    return app


def _flat(data: list[Any], depth: int = 0) -> list[Any] | None:
    """Row-major values of ``data``, flat or nested (at most two levels), or None."""
    if not any(isinstance(v, list) for v in data):
        return data
    if depth > 0 or not all(isinstance(v, list) for v in data):
        return None
    out: list[Any] = []
    for row in data:
        flat = _flat(row, depth + 1)
        if flat is None:
            return None
        out.extend(flat)
    return out


def _api_key(request: Request) -> str | None:
    return _key_from(request.headers.get("authorization", ""), request.headers.get("x-api-key"))


def _key_from(authorization: str, x_api_key: str | None) -> str | None:
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return x_api_key or None


_OPENAI_ROUTES = {"completions", "chat", "tokenize", "detokenize", "models"}


def _route_of(path: str) -> str:
    """The metrics label of a path."""
    if path.endswith("/predict"):
        return "predict"
    if path.endswith("/infer"):
        return "infer"
    return {"/v1/completions": "completions", "/v1/chat/completions": "chat",
            "/tokenize": "tokenize", "/detokenize": "detokenize", "/v1/account": "account",
            "/v1/models": "models"}.get(path, "models" if path.startswith("/v1/models/")
                                        else "other")


def _needs_key(method: str, path: str) -> bool:
    """Every route that spends or reveals anything: all POSTs, the account, the model list."""
    return method == "POST" or path in ("/v1/account", "/v1/models") or \
        (method == "GET" and path.startswith("/v1/models/") and path.count("/") == 3)


def _nan_to_none(a: np.ndarray) -> list[Any]:
    """A flat list of ``a``'s values with NaN as None (JSON null)."""
    values = a.ravel().tolist()
    if not np.isnan(a).any():
        return values
    return [None if isinstance(v, float) and v != v else v for v in values]


def _rows_nan_to_none(a: np.ndarray) -> list[Any]:
    """``a``'s rows as lists, with NaN as None (JSON null)."""
    if not np.isnan(a).any():
        return list(a.tolist())
    return [_nan_to_none(row) for row in a]


def _v1(answer: Answer, model: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "labels": answer.labels.tolist(),
                           "policy": answer.policy}
    if answer.probabilities is not None:
        out["probabilities"] = _rows_nan_to_none(answer.probabilities)
    if answer.confidence is not None:
        out["confidence"] = answer.confidence.tolist()
    if answer.leaf_ids is not None:
        out["leaf_ids"] = answer.leaf_ids.tolist()
    return out


def _v2(answer: Answer, model: str, request_id: str | None) -> dict[str, Any]:
    n = len(answer)
    outputs = [{"name": "label", "shape": [n], "datatype": "INT64",
                "data": answer.labels.tolist()}]
    if answer.probabilities is not None:
        p = answer.probabilities
        outputs.append({"name": "probabilities", "shape": list(p.shape), "datatype": "FP64",
                        "data": _nan_to_none(p)})
    if answer.confidence is not None:
        outputs.append({"name": "confidence", "shape": [n], "datatype": "FP64",
                        "data": answer.confidence.tolist()})
    if answer.leaf_ids is not None:
        outputs.append({"name": "leaf_id", "shape": [n], "datatype": "INT64",
                        "data": answer.leaf_ids.tolist()})
    return {"model_name": model, "id": request_id, "outputs": outputs,
            "parameters": {"policy": answer.policy}}
