"""The shape of every error the gateway sends:

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with a 4xx or 5xx
status. ``code`` is stable and machine-readable (``invalid_key``, ``out_of_domain``, ...),
``param`` names the request field at fault (or null), and ``type`` is the OpenAI class of
the status, so the official ``openai`` client raises its matching exception.

Under ``/v2/`` (the KServe v2 protocol, whose clients read ``error`` as a string) the same
four fields come flat: ``{"error": message, "type", "param", "code"}``.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what} for status, what in (
        (400, "Malformed body, or a value the route does not take"),
        (401, "Missing or invalid API key"),
        (403, "Key revoked or expired, or the account is suspended"),
        (404, "Unknown model"),
        (413, "Body or batch too large"),
        (422, "Invalid inputs (shape, values, domain)"),
        (429, "Rate limit, or too many bad keys from this address"),
        (502, "The upstream model server failed"),
        (503, "A state store or the audit log is unavailable (fail closed)"),
    )}
"""OpenAPI ``responses`` for the routes: every status they may send, with its body."""


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
