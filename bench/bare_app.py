"""The baseline for the overhead benchmark: the same model behind a bare FastAPI endpoint.

With ``BARE_AUDIT_URL`` set it also commits one audit record per answer to that store
(the gateway's own group commit), and with ``BARE_REDIS_URL`` it makes the round trips the
gateway's Redis path makes (``BARE_REDIS_TRIPS``, default 3) and nothing else: the floor a
gateway that records every answer, or keeps its state in Redis, starts from.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from modelshield.victims import load_victim

victim = load_victim("digits-mlp")
app = FastAPI()
audit_url = os.environ.get("BARE_AUDIT_URL")
redis_url = os.environ.get("BARE_REDIS_URL")
trips = int(os.environ.get("BARE_REDIS_TRIPS", "3"))
store: Any = None
if audit_url:
    from modelshield.store import AuditRecord, AuditStore

    store = AuditStore(audit_url)
client: Any = None
if redis_url:
    import redis

    client = redis.Redis.from_url(redis_url)


class Body(BaseModel):
    inputs: list[list[float]]


@app.post("/v1/models/digits-mlp/predict")
async def predict(body: Body) -> dict[str, Any]:
    x = np.asarray(body.inputs)
    pred = await run_in_threadpool(work, x)
    return {"labels": pred.labels.tolist(), "probabilities": pred.probabilities.tolist()}


def work(x: np.ndarray) -> Any:
    pred = victim.predict(x)
    if client is not None:
        for _ in range(trips):
            client.ping()
    if store is not None:
        store.commit([AuditRecord(ts=time.time(), key_id=None, client_ip="-",
                                  model="digits-mlp", rows=len(x), inputs=x,
                                  answer={"labels": pred.labels}, decision={})])
    return pred


@app.get("/metrics")
async def metrics() -> PlainTextResponse:
    """This process's audit commits and records, named and labelled as the gateway's
    ``/metrics`` names them (bench/_load.audit_commits reads both)."""
    commits, records = (store.commits, store.committed) if store is not None else (0, 0)
    pid = os.getpid()
    return PlainTextResponse(f'modelshield_audit_commits_total{{pid="{pid}"}} {commits}\n'
                             f'modelshield_audit_records_total{{pid="{pid}"}} {records}\n')


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}
