"""Routes that declare what they need.

Each route of the gateway says, where it is defined, whether it needs an API key, the label
its requests carry in ``/metrics``, and how it refuses a body that does not validate::

    @router.post("/v1/models/{model}/predict", metric="predict")
    @router.get("/v2/health/ready", public=True)

A key is needed unless the route says ``public=True``: a route added without a thought
is closed, not open. :class:`~modelshield.serve.middleware.AuthGate` reads the
declaration of the route a request will reach, and checks the key before the body is read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


@dataclass(frozen=True)
class Needs:
    """What a route needs: ``key`` (a valid API key, checked before the body is read),
    ``metric`` (its ``route`` label in ``/metrics``) and ``openai`` (a body that does not
    validate is refused OpenAI's way, 400 ``invalid_value``, not 422 ``invalid_request``)."""

    key: bool = True
    metric: str = "other"
    openai: bool = False


UNDECLARED = Needs()
"""What a route that declares nothing gets: a key is needed."""


class GatewayRoute(APIRoute):
    """A FastAPI route with its :class:`Needs`."""

    def __init__(self, path: str, endpoint: Callable[..., Any], *, needs: Needs = UNDECLARED,
                 **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.needs = needs


class GatewayRouter(APIRouter):
    """An ``APIRouter`` of :class:`GatewayRoute`; ``get`` and ``post`` take the route's
    needs: ``public=True`` (no key), ``metric`` and ``openai``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(route_class=GatewayRoute, **kwargs)

    def get(self, path: str, *, public: bool = False,
            metric: str = "other", openai: bool = False,
            **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.add(["GET"], path, public=public, metric=metric, openai=openai, **kwargs)

    def post(self, path: str, *, public: bool = False,
             metric: str = "other", openai: bool = False,
             **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.add(["POST"], path, public=public, metric=metric, openai=openai, **kwargs)

    def add(self, methods: list[str], path: str, *, public: bool = False,
            metric: str = "other", openai: bool = False,
            **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        """Add the decorated endpoint as a route with these needs."""
        needs = Needs(key=not public, metric=metric, openai=openai)

        def register(endpoint: Endpoint) -> Endpoint:
            self.add_api_route(path, endpoint, methods=methods, **kwargs)
            route = self.routes[-1]  # the route add_api_route just made
            if isinstance(route, GatewayRoute):
                route.needs = needs
            return endpoint

        return register


def needs_of(route: BaseRoute | None) -> Needs:
    """The declaration of ``route``; a route that declares nothing needs a key."""
    return route.needs if isinstance(route, GatewayRoute) else UNDECLARED


def declared(routes: Sequence[BaseRoute], scope: Scope) -> tuple[Needs, bool]:
    """What the route that ``scope`` reaches declares, and whether it answers the request
    (False: no route has its path, or none takes its method; a 404 or 405). The first
    route with the path speaks for a 405; a path no route has declares nothing."""
    partial: BaseRoute | None = None
    for route in routes:
        match = _match(route, scope)
        if match is Match.FULL:
            return needs_of(route), True
        if match is Match.PARTIAL and partial is None:
            partial = route
    return needs_of(partial), False


def _match(route: BaseRoute, scope: Scope) -> Match:
    """``route.matches(scope)``; for a plain route outside a mount, by the path's pattern
    and the methods alone (a tenth of the cost: this runs on every request, before the
    router matches it)."""
    if not isinstance(route, Route) or scope.get("root_path"):
        return route.matches(scope)[0]
    if route.path_regex.match(scope["path"]) is None:
        return Match.NONE
    return Match.PARTIAL if route.methods and scope["method"] not in route.methods else Match.FULL


def needs_at(routes: Sequence[BaseRoute], scope: Scope) -> Needs:
    """What the route of the request ``scope`` declares (for a 404: nothing)."""
    found = scope.get("route")  # set once the router has matched the request
    if isinstance(found, BaseRoute):
        return needs_of(found)
    return declared(routes, scope)[0]
