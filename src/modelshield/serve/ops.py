"""What operators and readers reach without a key: health (KServe v2), ``/metrics``
(Prometheus), the terms a key holder accepts, and the OpenAPI document with its two
viewers (``/docs``, ``/redoc``), declared here as public routes like any other."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from modelshield.serve.context import GatewayDep
from modelshield.serve.errors import ERROR_RESPONSES
from modelshield.serve.routing import GatewayRouter

router = GatewayRouter(responses=ERROR_RESPONSES)

OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"


@router.get("/v2/health/ready", public=True)
async def ready() -> dict[str, bool]:
    return {"ready": True}


@router.get("/v2/health/live", public=True)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/metrics", public=True)
async def metrics(gw: GatewayDep) -> PlainTextResponse:
    return PlainTextResponse(gw.metrics.text(), media_type="text/plain; version=0.0.4")


@router.get("/terms", public=True)
async def terms(gw: GatewayDep) -> dict[str, str]:
    return {"version": gw.first.config.terms_version, "text": gw.first.config.terms}


# FastAPI's own documentation routes (the app is made without them), as it writes them.
docs = GatewayRouter()
_PAGE: dict[str, Any] = {"public": True, "include_in_schema": False}


@docs.add(["GET", "HEAD"], OPENAPI_URL, **_PAGE)
async def openapi(request: Request) -> JSONResponse:
    app: FastAPI = request.app
    root_path = request.scope.get("root_path", "").rstrip("/")
    schema = app.openapi()
    if root_path and app.root_path_in_servers:
        server_urls = {s.get("url") for s in schema.get("servers", [])}
        if root_path not in server_urls:
            schema = {**schema, "servers": [{"url": root_path}, *schema.get("servers", [])]}
    return JSONResponse(schema)


@docs.add(["GET", "HEAD"], DOCS_URL, **_PAGE)
async def swagger_ui_html(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    root_path = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(openapi_url=root_path + OPENAPI_URL,
                               title=f"{app.title} - Swagger UI",
                               oauth2_redirect_url=root_path + OAUTH2_REDIRECT_URL,
                               init_oauth=app.swagger_ui_init_oauth,
                               swagger_ui_parameters=app.swagger_ui_parameters)


@docs.add(["GET", "HEAD"], OAUTH2_REDIRECT_URL, **_PAGE)
async def swagger_ui_redirect(request: Request) -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@docs.add(["GET", "HEAD"], REDOC_URL, **_PAGE)
async def redoc_html(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    root_path = request.scope.get("root_path", "").rstrip("/")
    return get_redoc_html(openapi_url=root_path + OPENAPI_URL, title=f"{app.title} - ReDoc")
