"""The Open Inference Protocol (KServe v2), so existing clients work:
``POST /v2/models/{model}/infer``, the model's metadata and readiness, and the server's.
Its errors come flat (:mod:`modelshield.serve.errors`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from modelshield.serve.answers import v2_body
from modelshield.serve.context import GatewayDep, api_key, refusal
from modelshield.serve.errors import V2_ERROR_RESPONSES
from modelshield.serve.routing import GatewayRouter

router = GatewayRouter(responses=V2_ERROR_RESPONSES)


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class V2Request(BaseModel):
    id: str | None = None
    inputs: list[V2Tensor]


def inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` put in place of each reference to them, so that it
    stands alone wherever the OpenAPI document puts it."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


@router.post("/v2/models/{model}/infer", metric="infer",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": inline(V2Request.model_json_schema())}}}})
async def infer(model: str, request: Request, gw: GatewayDep) -> Any:
    # Parsed here, whatever the Content-Type: v2 clients (tritonclient) send none.
    body = _parse(await request.body())
    answer, decision = await gw.classify(request, model, _rows(body))
    return JSONResponse(v2_body(answer, model, body.id), headers=decision.headers)


@router.get("/v2/models/{model}/ready", public=True, metric="v2")
async def model_ready(model: str, gw: GatewayDep) -> Any:
    """KServe v2 model readiness (200 for a model served here)."""
    gw.shield(model)
    return {"name": model, "ready": True}


@router.get("/v2/models/{model}", metric="v2")
async def metadata(model: str, request: Request, gw: GatewayDep) -> Any:
    """KServe v2 model metadata: input width, classes, domain; to a key whose tier the
    model offers."""
    spec = (await gw.usable(request, model)).spec
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
                           "terms_version": gw.first.config.terms_version}}


@router.get("/v2", public=True)
async def server(request: Request, gw: GatewayDep) -> dict[str, Any]:
    """KServe v2 server metadata, and the models the caller's key may use (none without
    one)."""
    models = await run_in_threadpool(gw.models_for, api_key(request))
    return {"name": "modelshield", "version": "0.1.0", "extensions": [], "models": models}


def _parse(raw: bytes) -> V2Request:
    """The request body, or a 400 (not JSON) or 422 (not a v2 request) naming the field."""
    try:
        return V2Request.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise refusal(400, "malformed_json",
                          f"The body is not valid JSON: {first['msg']}.") from None
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise refusal(422, "invalid_request", f"{where}: {first['msg']}",
                      str(first["loc"][0]) if first["loc"] else None) from None


def _rows(body: V2Request) -> np.ndarray:
    """The one input tensor's rows (null as NaN), or a 422 naming what is wrong."""
    if len(body.inputs) != 1:
        raise refusal(422, "invalid_request", "send exactly one input tensor")
    t = body.inputs[0]
    data = _flat(t.data)  # the protocol allows the data flat or nested by row
    if data is None or len(t.shape) != 2 or t.shape[0] * t.shape[1] != len(data):
        raise refusal(422, "invalid_shape", f"shape {t.shape} does not match the data values",
                      "inputs")
    try:
        return np.asarray([np.nan if v is None else v for v in data],
                          dtype=np.float64).reshape(t.shape)
    except (TypeError, ValueError, OverflowError):
        raise refusal(422, "invalid_inputs", "data must be numbers that fit a 64-bit float",
                      "inputs") from None


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
