"""The baseline for the overhead benchmark: the same model behind a bare FastAPI endpoint."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from modelshield.victims import load_victim

victim = load_victim("digits-mlp")
app = FastAPI()


class Body(BaseModel):
    inputs: list[list[float]]


@app.post("/v1/models/digits-mlp/predict")
async def predict(body: Body) -> dict[str, Any]:
    pred = await run_in_threadpool(victim.predict, np.asarray(body.inputs))
    return {"labels": pred.labels.tolist(), "probabilities": pred.probabilities.tolist()}


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}
