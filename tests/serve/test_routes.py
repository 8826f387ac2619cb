"""Every route of the real app declares what it needs, and the declaration holds: a route
answers without a key only if it is declared public, and the public routes are exactly the
intended ones (health, metrics, terms, the KServe v2 server and model metadata, the
OpenAPI document and its viewers)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from httpx import Client as HttpClient

from modelshield.defenses.shield import Shield
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from modelshield.serve.routing import needs_of
from tests.servers import live_app

MODEL = "digits-mlp"

PUBLIC = {
    ("GET", "/v2/health/ready"), ("GET", "/v2/health/live"), ("GET", "/metrics"),
    ("GET", "/terms"), ("GET", "/v2"), ("GET", "/v2/models/{model}/ready"),
    *((method, path) for method in ("GET", "HEAD")
      for path in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")),
}
"""What anyone may reach without a key."""

LABELS = {
    "/v1/models/{model}/predict": "predict", "/v1/account": "account",
    "/v2/models/{model}/infer": "infer", "/v2/models/{model}/ready": "v2",
    "/v2/models/{model}": "v2", "/v1/models": "models", "/v1/models/{model_id}": "models",
    "/tokenize": "tokenize", "/detokenize": "detokenize", "/v1/completions": "completions",
    "/v1/chat/completions": "chat",
}
"""Each route's label in /metrics (dashboards read them); every other route is "other"."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, HttpClient]]:
    tmp: Path = tmp_path_factory.mktemp("routes")
    shield: Shield = build_shield({"model": {"builtin": MODEL},
                                   "audit_url": f"sqlite:///{tmp / 'audit.db'}",
                                   "auth_failure_limits": None, "tiers": {"pro": {}}})
    app = create_app(shield)
    with live_app(app) as client:
        yield app, client
    shield.close()


def operations(app: FastAPI) -> list[tuple[str, APIRoute]]:
    """Every (method, route) of the app. A route the walk cannot see into (a mount, an
    included router kept apart) fails the walk rather than being skipped."""
    found = []
    for route in app.routes:
        assert isinstance(route, APIRoute), f"cannot walk into {route!r}"
        found.extend((method, route) for method in sorted(route.methods))
    return found


def test_the_walk_sees_every_documented_route(served: Any) -> None:
    app, _ = served
    walked = {(method, route.path) for method, route in operations(app)}
    documented = {(method.upper(), path) for path, item in app.openapi()["paths"].items()
                  for method in item}
    assert documented and documented <= walked


def test_a_route_answers_without_a_key_only_if_it_is_declared_public(served: Any) -> None:
    app, client = served
    for method, route in operations(app):
        url = re.sub(r"\{[^}]+\}", MODEL, route.path)
        r = client.request(method, url, json={} if method == "POST" else None)
        if needs_of(route).key:
            assert r.status_code == 401, f"{method} {route.path} answered {r.status_code}"
            flat = route.path.startswith("/v2/")  # KServe v2: the error fields come flat
            assert (r.json() if flat else r.json()["error"])["code"] == "missing_key"
        else:
            assert r.status_code == 200, f"{method} {route.path} answered {r.status_code}"


def test_the_public_routes_are_exactly_the_intended_ones(served: Any) -> None:
    app, _ = served
    public = {(method, route.path) for method, route in operations(app)
              if not needs_of(route).key}
    assert public == PUBLIC


def test_a_route_that_declares_nothing_needs_a_key(served: Any) -> None:
    app, client = served

    @app.get("/v1/secrets")
    async def secrets() -> dict[str, str]:
        return {"secret": "nobody said this was public"}

    try:
        r = client.get("/v1/secrets")
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_key"
    finally:
        app.router.routes.remove(app.routes[-1])


def test_each_route_counts_under_its_declared_label(served: Any) -> None:
    app, client = served
    labels = {route.path: needs_of(route).metric for _, route in operations(app)}
    assert labels == {path: LABELS.get(path, "other") for path in labels}
    # A refusal is counted under the label of the route that refused it.
    client.get("/v2/models/nope/ready")
    client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [[0.0]]})
    metrics = client.get("/metrics").text
    assert 'modelshield_requests_total{route="v2",status="404"} 1.0' in metrics
    assert 'modelshield_requests_total{route="predict",status="401"}' in metrics
