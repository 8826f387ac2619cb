"""The gateway: the Shield served over HTTP (FastAPI on uvicorn).

Routes:

* ``POST /v1/models/{name}/predict`` — ``{"inputs": [[...], ...]}`` → labels and whatever
  scores the key's tier lets out;
* ``POST /v2/models/{name}/infer`` — the Open Inference Protocol (KServe v2), so existing
  clients work;
* ``GET /v2/models/{name}`` (metadata: input shape, classes, domain), ``GET /v2/health/ready``,
  ``GET /v2/health/live``, ``GET /metrics`` (Prometheus), ``GET /docs`` (OpenAPI).

Every refusal is a JSON body ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx
status; nothing refused is recorded as answered.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from modelshield.answer import Answer
from modelshield.defenses.shield import Shield
from modelshield.errors import Denied
from modelshield.serve.openai import add_openai_routes


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
                await self._too_large(send)
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
                await self._too_large(send)

        await self.app(scope, counted, guarded)

    async def _too_large(self, send: Any) -> None:
        body = JSONResponse({"error": {"code": "body_too_large", "message":
                                       f"request bodies are limited to {self.max_bytes} bytes"}},
                            status_code=413)
        await body({"type": "http"}, _nothing, send)


async def _nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def create_app(shield: Shield, max_body_bytes: int = 8 * 2**20) -> FastAPI:
    """The gateway app around one Shield; bodies over ``max_body_bytes`` get a 413."""
    app = FastAPI(title="modelshield gateway", version="0.1.0",
                  description="A model behind layered defenses against extraction.")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    name = shield.spec.name
    registry = CollectorRegistry()
    requests = Counter("modelshield_requests_total", "Requests by route and status",
                       ["route", "status"], registry=registry)
    rows = Counter("modelshield_rows_total", "Rows answered", registry=registry)
    flags = Counter("modelshield_flags_total", "Detector flags", ["detector"], registry=registry)
    latency = Histogram("modelshield_request_seconds", "Request latency", ["route"],
                        registry=registry)

    def error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
              route: str = "other") -> JSONResponse:
        requests.labels(route, str(status)).inc()
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        if first["type"] == "json_invalid":
            return error(400, "malformed_json", f"The body is not valid JSON: {first['msg']} "
                         f"at character {where}.")
        return error(422, "invalid_request", f"{where}: {first['msg']}")

    async def serve(request: Request, model: str, inputs: Any, route: str) -> Any:
        if model != name:
            return error(404, "unknown_model", f"Unknown model {model!r}; this gateway serves "
                         f"{name!r}.", route=route)
        start = time.perf_counter()
        key = _api_key(request)
        ip = request.client.host if request.client else "unknown"
        try:
            answer, decision = await run_in_threadpool(shield.handle, key, inputs, ip)
        except Denied as exc:
            return error(exc.status, exc.code, str(exc), exc.headers, route)
        requests.labels(route, "200").inc()
        rows.inc(len(answer))
        for f in decision.flags:
            flags.labels(f.detector).inc()
        latency.labels(route).observe(time.perf_counter() - start)
        return answer, decision

    @app.post("/v1/models/{model}/predict")
    async def predict(model: str, body: PredictRequest, request: Request) -> Any:
        inputs: Any = body.inputs
        with contextlib.suppress(ValueError):  # ragged rows: the Shield names the shape
            inputs = np.asarray(inputs, dtype=np.float64)  # null (None) reads as NaN
        out = await serve(request, model, inputs, "predict")
        if isinstance(out, JSONResponse):
            return out
        answer, decision = out
        return JSONResponse(_v1(answer, name), headers=decision.headers)

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, body: V2Request, request: Request) -> Any:
        if len(body.inputs) != 1:
            return error(422, "invalid_request", "send exactly one input tensor", route="infer")
        t = body.inputs[0]
        if len(t.shape) != 2 or t.shape[0] * t.shape[1] != len(t.data):
            return error(422, "invalid_shape", f"shape {t.shape} does not match "
                         f"{len(t.data)} data values", route="infer")
        try:
            x = np.asarray([np.nan if v is None else v for v in t.data],
                           dtype=np.float64).reshape(t.shape)
        except (TypeError, ValueError):
            return error(422, "invalid_inputs", "data must be numbers", route="infer")
        out = await serve(request, model, x, "infer")
        if isinstance(out, JSONResponse):
            return out
        answer, decision = out
        return JSONResponse(_v2(answer, name, body.id), headers=decision.headers)

    @app.get("/v2/models/{model}")
    async def metadata(model: str) -> Any:
        if model != name:
            return error(404, "unknown_model", f"Unknown model {model!r}.")
        spec = shield.spec
        return {"name": name, "platform": "modelshield",
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
    async def account(request: Request) -> Any:
        """The caller's own tier, output policy and limits; checks a key without a query."""
        try:
            return await run_in_threadpool(shield.account, _api_key(request))
        except Denied as exc:
            return error(exc.status, exc.code, str(exc), exc.headers, "account")

    def count(route: str, status: int) -> None:
        requests.labels(route, str(status)).inc()

    add_openai_routes(app, shield, count)

    @app.get("/v2")
    async def server() -> dict[str, Any]:
        return {"name": "modelshield", "version": "0.1.0", "extensions": [], "models": [name]}

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


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


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
