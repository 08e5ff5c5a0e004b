"""``create_app(settings)``: the FastAPI application, its lifecycle, middleware and its one error shape.

Every error the app answers has the shape ``{"error": {"type", "message", "param"}}``: the service's own
errors (:mod:`service.errors`), the framework's (unknown route 404, wrong method 405 with ``Allow``),
an unparsable body (400), invalid input (422) and, as a last resort, 500 (:mod:`service.request_log`)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import multiprocess
from starlette.exceptions import HTTPException

from service.batching import Batcher, BatchLimits
from service.body_limit import BodyLimitMiddleware
from service.errors import BadRequest, InvalidInput, ServiceError, for_status, public_text
from service.metrics import Metrics, MetricsMiddleware, multiprocess_dir
from service.openapi import openapi_schema
from service.probes import ProbeMiddleware
from service.readiness import Readiness
from service.registry import Registry, SearchParams
from service.request_log import RequestContextMiddleware
from service.routes import admin, answer, health, models, page, retrieve
from service.settings import Settings, build_options

log = logging.getLogger(__name__)
DOCS_STATIC = "/docs-static"  # Swagger UI and ReDoc files (fastapi-offline), served with the API pages


def _error_response(e: ServiceError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _public_error_response(e: ServiceError, home: Path) -> JSONResponse:
    """Our errors; a message quoting an exception (a failed load, a refused index) loses this machine's paths."""
    e.message = public_text(e.message, home)
    return _error_response(e)


async def _service_error(request: Request, e: Exception) -> Response:
    assert isinstance(e, ServiceError)
    return _public_error_response(e, request.app.state.settings.home)


async def _http_error(request: Request, e: Exception) -> Response:
    """The framework's own errors: no such route (404), wrong method (405, ``Allow`` kept), ..."""
    assert isinstance(e, HTTPException)
    what = f"{request.method} {request.url.path[:200]}"
    message = {404: f"no route {what}", 405: f"{what}: method not allowed"}.get(e.status_code, str(e.detail))
    return _error_response(for_status(e.status_code, message, dict(e.headers or {})))


async def _validation_error(request: Request, e: Exception) -> Response:
    """422 naming the first invalid field; 400 when the body is not JSON at all."""
    assert isinstance(e, RequestValidationError)
    errors = e.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        at = first.get("loc", ())[-1]
        return _error_response(BadRequest(f"the body is not valid JSON (at character {at})"))
    loc = [str(x) for x in first.get("loc", ())]
    param = ".".join(loc[1:] if loc[:1] in (["body"], ["path"], ["query"]) else loc) or None
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "missing":
        msg = f"field {param!r} is required" if param else "a JSON body is required"
    elif param is None and first.get("type") == "model_attributes_type":
        msg = "the body must be a JSON object (content-type application/json)"
    elif param:
        msg = f"{param}: {msg}"
    return _error_response(InvalidInput(msg, param=param))


async def _poll_indexes(registry: Registry, interval_s: float) -> None:
    """Every ``interval_s``, swap in index versions published since the last look (see
    :meth:`Registry.poll_indexes`)."""
    while True:
        try:
            await asyncio.to_thread(registry.poll_indexes)
        except Exception:  # a failing poll must not end polling
            log.exception("polling for index versions failed")
        await asyncio.sleep(interval_s)


def _shared_threads(workers: int) -> int:
    """torch threads of one of ``workers`` > 1 worker processes: this process's CPUs divided among them (at
    least 1); 0 (torch's default) for a single process."""
    if workers <= 1:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // workers)


def batch_limits(settings: Settings) -> BatchLimits:
    return BatchLimits(settings.max_batch_size, settings.max_batch_tokens, settings.max_queue_delay_ms / 1e3,
                       settings.max_queue_size, settings.retry_after_s)


def create_app(settings: Settings, registry: Registry | None = None) -> FastAPI:
    """The realmqa HTTP application.

    Args:
        settings: the validated settings.
        registry: models to serve; None loads the models of ``settings.home`` at start (lifespan).
    """
    metrics = Metrics()
    batcher = Batcher(batch_limits(settings), metrics)
    readiness = Readiness(settings.readiness_interval_s, settings.request_timeout_ms / 1e3)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if threads := settings.torch_threads or _shared_threads(settings.workers):
            torch.set_num_threads(threads)
        switch_interval_s = sys.getswitchinterval()
        if settings.switch_interval_ms:
            sys.setswitchinterval(settings.switch_interval_ms / 1e3)
        if app.state.registry is None:
            app.state.registry = await asyncio.to_thread(
                Registry.from_home, settings.home, settings.model, settings.build_missing_index,
                settings.default_model, SearchParams(settings.nprobe, settings.ef_search), settings.precision,
                build_options(settings))
            log.info("serving %s", [e.model_ref + " on " + e.index_ref for e in app.state.registry.served()])
        app.state.registry.observers.append(metrics.on_registry_event)
        batcher.start()
        await readiness.start(app.state.registry, batcher)  # the first real check, then in the background
        poller = (asyncio.create_task(_poll_indexes(app.state.registry, settings.index_poll_interval_s))
                  if settings.index_poll_interval_s else None)
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
            await readiness.stop()
            await batcher.shutdown(settings.shutdown_timeout_s)
            app.state.registry = None
            sys.setswitchinterval(switch_interval_s)
            if multiprocess_dir() is not None:  # a --workers worker: its live gauges leave the sums
                multiprocess.mark_process_dead(os.getpid())

    # /docs (Swagger UI) and /redoc load their scripts and styles from DOCS_STATIC, files of the fastapi-offline
    # package, not from a CDN: the API pages work on a cluster with no way out to the internet.
    app = FastAPIOffline(title="realmqa", version="1", lifespan=lifespan, static_url=DOCS_STATIC,
                         description="Open-domain question answering in the manner of REALM (Guu et al. 2020).")
    app.state.settings = settings
    app.state.registry = registry
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.readiness = readiness
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    probes = {path: (r, health.PROBES[path]) for r in health.router.routes
              if (path := str(getattr(r, "path", ""))) in health.PROBES}
    app.add_middleware(ProbeMiddleware, probes=probes,  # innermost: probes still get ids, logs and metrics
                       respond=lambda e: _public_error_response(e, settings.home))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, respond=_error_response)
    routers = [m.router for m in (answer, retrieve, health, models, admin, page)]
    static_paths = frozenset(str(r.path) for router in routers for r in router.routes
                             if "{" not in str(getattr(r, "path", "{")))
    app.add_middleware(MetricsMiddleware, metrics=metrics, static_paths=static_paths)
    app.add_middleware(RequestContextMiddleware, respond=_error_response)  # outermost
    for router in routers:
        app.include_router(router)
    app.openapi = lambda: openapi_schema(app, settings)  # type: ignore[method-assign]
    return app


async def begin_shutdown(app: FastAPI) -> None:
    """SIGTERM: refuse new work, let queued work finish within ``shutdown_timeout_s``, answer the rest 503."""
    await app.state.batcher.shutdown(app.state.settings.shutdown_timeout_s)
