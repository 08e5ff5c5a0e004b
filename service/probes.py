"""ASGI middleware: ``GET /healthz`` and ``GET /readyz`` answered before FastAPI's routing.

An orchestrator probes all the time, and on the engine's machine: every millisecond the event loop spends on a
probe is a millisecond the engine thread may wait for the GIL. Through FastAPI's router a probe cost about 0.2
ms of the app's CPU (route matching, dependency solving, response validation) on top of uvicorn's parsing; here
it is a dictionary lookup and the probe's own function. The middleware sits inside the request-id, metrics and
body-limit middleware, so a probe still gets its ``X-Request-ID``, its access log line, its count under its route
and its errors in the one JSON shape. The routes in :mod:`service.routes.health` stay the declaration in the
OpenAPI document and answer the same through the router (``tests/service/test_contract.py`` checks both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ServiceError

Probe = Callable[[Any], dict[str, Any]]  # app.state → the 200 body; raises ServiceError (503)


class ProbeMiddleware:
    """Answers ``GET`` on the probe paths from state; any other request goes on to the app.

    Args:
        probes: path → (its route in the app, for the access log's and the metrics' route label; the probe).
        respond: turns a :class:`ServiceError` into an ASGI app (the one JSON error shape).
    """

    def __init__(self, app: ASGIApp, probes: dict[str, tuple[BaseRoute, Probe]],
                 respond: Callable[[ServiceError], ASGIApp]) -> None:
        self.app, self.probes, self.respond = app, probes, respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        probe = self.probes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if probe is None:
            await self.app(scope, receive, send)
            return
        route, answer = probe
        scope["route"] = route
        try:
            response: ASGIApp = JSONResponse(answer(scope["app"].state))
        except ServiceError as e:
            response = self.respond(e)
        await response(scope, receive, send)
