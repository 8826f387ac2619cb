"""The shape of every error the gateway sends:

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with a 4xx or 5xx
status. ``code`` is stable and machine-readable (``invalid_key``, ``out_of_domain``, ...),
``param`` names the request field at fault (or null), and ``type`` is the OpenAI class of
the status, so the official ``openai`` client raises its matching exception.

Under ``/v2/`` (the KServe v2 protocol, whose clients read ``error`` as a string) the same
four fields come flat: ``{"error": message, "type", "param", "code"}``.

Every fault a route meets becomes its response here, counted in ``/metrics`` under the
route's label (:func:`add_handlers`): a refusal (:class:`~modelshield.errors.Denied`,
raised by the Shield or by a route), a body that does not validate, an unknown route or
method. The middleware answers the rest (:mod:`modelshield.serve.middleware`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from modelshield.errors import Denied
from modelshield.serve.metrics import Metrics
from modelshield.serve.routing import Needs, needs_at

_TYPES = {400: "invalid_request_error", 401: "authentication_error",
          403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
          409: "conflict_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorBody(BaseModel):
    """What every refusal carries."""

    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """What every refusal under ``/v2/`` carries: the KServe v2 shape (``error`` a
    string), with the same three fields beside it."""

    error: str
    type: str
    param: str | None = None
    code: str


_STATUSES = (
        (400, "Malformed body, or a value the route does not take"),
        (401, "Missing or invalid API key"),
        (403, "Key revoked or expired, or the account is suspended"),
        (404, "Unknown model"),
        (413, "Body or batch too large"),
        (422, "Invalid inputs (shape, values, domain)"),
        (429, "Rate limit, or too many bad keys from this address"),
        (502, "The upstream model server failed"),
        (503, "A state store or the audit log is unavailable (fail closed)"),
)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what} for status, what in _STATUSES}
"""OpenAPI ``responses`` for the routes: every status they may send, with its body."""
V2_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": V2ErrorBody, "description": what} for status, what in _STATUSES}
"""The same for the ``/v2/`` routes, whose errors come flat."""


def shown(value: str, limit: int = 64) -> str:
    """``value`` as a refusal may echo it: quoted, and cut at ``limit`` characters (saying
    how long it was), so a 10,000-character name does not come back whole."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def error_type(status: int) -> str:
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_response(status: int, code: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    """The JSON error response (flat for a ``/v2/`` ``path``); the internal
    ``X-Error-Param`` header becomes ``param``."""
    headers = dict(headers or {})
    param = headers.pop("X-Error-Param", param)
    detail = {"message": message, "type": error_type(status), "param": param, "code": code}
    if path.startswith("/v2/"):
        body: dict[str, Any] = {"error": message, **{k: v for k, v in detail.items()
                                                    if k != "message"}}
    else:
        body = {"error": detail}
    return JSONResponse(body, status_code=status, headers=headers)


def add_handlers(app: FastAPI) -> None:
    """Answer refusals, invalid bodies and unknown routes with the error shape."""
    app.add_exception_handler(Denied, refused)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]


async def refused(request: Request, exc: Denied) -> JSONResponse:
    """A refusal, by the Shield or by the route."""
    return _counted(request, exc.status, exc.code, str(exc), exc.headers)


async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body (or parameter) that does not validate: 422 ``invalid_request``, or on an
    OpenAI route 400 ``invalid_value``; a body that is not JSON 400 ``malformed_json``."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    if first["type"] == "json_invalid":
        return _counted(request, 400, "malformed_json", f"The body is not valid JSON: "
                        f"{first['msg']} at character {where}.")
    param = next((str(p) for p in first["loc"][1:2]), None) if first["loc"] else None
    openai = _needs(request).openai
    return _counted(request, 400 if openai else 422,
                    "invalid_value" if openai else "invalid_request",
                    f"{where}: {first['msg']}", param=param)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "malformed_body"}


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """An unknown route or method, or a body that cannot be read as JSON (or not read at
    all: a client that left, or whose body missed its deadline, is counted as a 408, as
    the middleware counts it on the routes that read their own body)."""
    if isinstance(exc.__cause__, ClientDisconnect):
        return _counted(request, 408, "client_disconnected", "The client left before its "
                        "body was read (or its body missed its deadline).")
    message = {404: f"No route {request.url.path}; see /docs for the routes.",
               405: f"{request.method} is not allowed on {request.url.path}.",
               400: "The body could not be read as JSON (invalid UTF-8, or nested too "
                    "deeply)."}.get(exc.status_code, str(exc.detail))
    return _counted(request, exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"),
                    message, dict(exc.headers or {}))


def _needs(request: Request) -> Needs:
    return needs_at(request.app.router.routes, request.scope)


def _counted(request: Request, status: int, code: str, message: str,
             headers: dict[str, str] | None = None, param: str | None = None) -> JSONResponse:
    """The error response, counted under the route's label."""
    metrics: Metrics = request.app.state.gateway.metrics
    metrics.count(_needs(request).metric, status)
    return error_response(status, code, message, param, headers, request.url.path)
