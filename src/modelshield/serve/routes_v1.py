"""The gateway's own routes: ``POST /v1/models/{model}/predict`` (rows of features to
labels and whatever scores the key's tier lets out) and ``GET /v1/account``."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from modelshield.serve.answers import v1_body
from modelshield.serve.context import GatewayDep, api_key, client_ip
from modelshield.serve.errors import ERROR_RESPONSES
from modelshield.serve.routing import GatewayRouter

router = GatewayRouter(responses=ERROR_RESPONSES)


class PredictRequest(BaseModel):
    inputs: list[list[float | None]] = Field(description="rows of features; null = missing")


@router.post("/v1/models/{model}/predict", metric="predict")
async def predict(model: str, body: PredictRequest, request: Request, gw: GatewayDep) -> Any:
    inputs: Any = body.inputs
    with contextlib.suppress(ValueError):  # ragged rows: the Shield names the shape
        inputs = np.asarray(inputs, dtype=np.float64)  # null (None) reads as NaN
    answer, decision = await gw.classify(request, model, inputs)
    return JSONResponse(v1_body(answer, model), headers=decision.headers)


@router.get("/v1/account", metric="account")
async def account(request: Request, gw: GatewayDep, model: str | None = None) -> Any:
    """The caller's own tier, output policy and limits on ``model`` (the first model
    served by default); checks a key without a query."""
    target = gw.first if model is None else gw.shield(model)
    return await run_in_threadpool(target.account, api_key(request), client_ip(request))
