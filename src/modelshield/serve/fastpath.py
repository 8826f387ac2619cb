"""The gateway's busiest route, answered without FastAPI's machinery where it can be.

``POST /v1/models/{model}/predict`` with a well-formed body (a JSON object whose one field
``inputs`` is a list of equally long rows of numbers or nulls, as ``application/json``) is
answered here: the body read, parsed and checked in a few microseconds, the rows through
the model's Shield as the route would send them, the same JSON and headers back. FastAPI's
router, its dependency resolution and pydantic's validation cost the event loop about as
much CPU as the model's own prediction, on every answer.

Anything else goes on to the app as it came, its body replayed: another route, an unknown
model, a body the route would refuse (so the refusal, its code and its wording are the
route's own), or one this check is unsure of (strings, booleans, extra fields, ragged rows).
It sits inside the gateway's middleware, so the key was checked before the body was read
and the body's size was bounded (:mod:`modelshield.serve.middleware`); the route itself
stays declared, so ``/docs`` describes it.
"""

from __future__ import annotations

import json
import re

import numpy as np
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelshield.errors import Denied
from modelshield.serve.answers import v1_body
from modelshield.serve.context import Gateway, scope_key
from modelshield.serve.errors import error_response

PREDICT = re.compile(r"/v1/models/([^/]+)/predict")
"""The route's path; ``model`` is the one path segment it names."""
LABEL = "predict"
"""The route's label in ``/metrics`` (routes_v1 declares the same)."""
_NUMBER = (int, float)


class FastPredict:
    """Answer a well-formed predict request directly; pass anything else to ``app``."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = _model(scope, self.gateway)
        if model is None:
            await self.app(scope, receive, send)
            return
        body = await _read(receive)
        inputs = rows_of(body)
        if inputs is None:  # the route decides, and words any refusal
            await self.app(scope, _replay(body, receive), send)
            return
        await self._answer(scope, send, model, inputs)

    async def _answer(self, scope: Scope, send: Send, model: str, inputs: np.ndarray
                      ) -> None:
        client = scope.get("client")
        try:
            answer, decision = await self.gateway.answer(
                model, scope_key(scope), client[0] if client else "unknown", inputs, LABEL)
        except Denied as exc:
            self.gateway.metrics.count(LABEL, exc.status)
            response = error_response(exc.status, exc.code, str(exc), None, exc.headers,
                                      scope["path"])
        else:
            response = JSONResponse(v1_body(answer, model), headers=decision.headers)
        await response(scope, _no_body, send)


def _model(scope: Scope, gateway: Gateway) -> str | None:
    """The served model a JSON predict request names, or None (not this route's)."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    match = PREDICT.fullmatch(scope["path"])
    if match is None or match.group(1) not in gateway.shields:
        return None
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return match.group(1) if kind == b"application/json" else None
    return None


def rows_of(body: bytes) -> np.ndarray | None:
    """The rows of a predict body as float64 (null as NaN), if the body is one the route
    would take exactly so: a JSON object with the one field ``inputs``, a non-empty list
    of non-empty rows of equal length holding only numbers and nulls. None otherwise
    (the route then decides)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict or len(obj) != 1:
        return None
    rows = obj.get("inputs")
    if type(rows) is not list or not rows or type(rows[0]) is not list or not rows[0]:
        return None
    width = len(rows[0])
    for row in rows:
        if type(row) is not list or len(row) != width:
            return None
        for v in row:
            if type(v) not in _NUMBER and v is not None:
                return None
    try:
        return np.asarray(rows, dtype=np.float64)
    except (OverflowError, ValueError):  # an integer past a float's range
        return None


async def _read(receive: Receive) -> bytes:
    """The request's whole body (its size is already bounded by ``BodyLimit``)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` with the body already read put back in front of it."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
