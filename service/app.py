"""``create_app(settings)``: the FastAPI application, its lifecycle and its one error shape."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.errors import InvalidInput, PayloadTooLarge, ServiceError
from service.registry import Registry
from service.routes import answer, health, retrieve
from service.settings import Settings

log = logging.getLogger(__name__)


def _error_response(e: ServiceError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _service_error(request: Request, e: Exception) -> Response:
    assert isinstance(e, ServiceError)
    return _error_response(e)


async def _validation_error(request: Request, e: Exception) -> Response:
    assert isinstance(e, RequestValidationError)
    errors = e.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "missing":
        msg = f"field {param!r} is required" if param else "a JSON body is required"
    elif param:
        msg = f"{param}: {msg}"
    return _error_response(InvalidInput(msg, param=param))


def create_app(settings: Settings, registry: Registry | None = None) -> FastAPI:
    """The realmqa HTTP application.

    Args:
        settings: the validated settings.
        registry: engines to serve; None loads every model in ``settings.home`` at start (lifespan).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        if app.state.registry is None:
            app.state.registry = Registry.load(settings.home, settings.model, settings.build_missing_index)
            log.info("serving %s", [e.model_ref + " on " + e.index_ref for e in app.state.registry.engines.values()])
        try:
            yield
        finally:
            app.state.registry = None

    app = FastAPI(title="realmqa", lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > settings.max_body_bytes:
            return _error_response(PayloadTooLarge(
                f"request body of {size} bytes is larger than {settings.max_body_bytes}", param=None))
        return await call_next(request)

    for module in (answer, retrieve, health):
        app.include_router(module.router)
    return app
