"""``GET /healthz`` (alive: the process and its batching task), ``GET /readyz`` (ready to answer, from state and
the last background check: no engine call), ``GET /metrics``. The probes' GETs are answered by
:class:`service.probes.ProbeMiddleware` with the same functions, before routing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from index.home import Home
from index.jobs import running_builds
from service.batching import Batcher
from service.deps import BatcherDep, MetricsDep, RegistryDep, SettingsDep
from service.errors import NotReady
from service.readiness import Readiness
from service.schemas import error_responses

router = APIRouter()


def alive(state: State) -> dict[str, str]:
    """``/healthz``'s body from the app's state.

    Raises:
        NotReady: the batching task has died: every request would get 503, so the process should be restarted.
    """
    batcher: Batcher = state.batcher
    if batcher.failure is not None:
        raise NotReady(batcher.failure)
    return {"status": "alive"}


def ready(state: State) -> dict[str, object]:
    """``/readyz``'s body from the app's state (:meth:`Readiness.state`; no engine call).

    Raises:
        NotReady: not ready, saying why.
    """
    readiness: Readiness = state.readiness
    ok, why, detail = readiness.state(state.registry, state.batcher)
    if not ok:
        raise NotReady(f"not ready: {why}")
    return {"status": "ready", "models": list(detail), "checks": detail}


# GET on these paths is answered by service.probes.ProbeMiddleware before routing (a probe costs little); the
# routes below declare them in the OpenAPI document and answer the same through the router.
PROBES: dict[str, Callable[[State], dict[str, Any]]] = {"/healthz": alive, "/readyz": ready}


@router.get("/healthz", responses=error_responses(503))
async def healthz(request: Request) -> dict[str, str]:
    """Alive: 503 once the batching task has died (the process should be restarted)."""
    return alive(request.app.state)


@router.get("/readyz", responses=error_responses(503))
async def readyz(request: Request) -> dict[str, object]:
    """Ready to answer: a model is served, the batcher is alive and not shutting down, and the last background
    check of every served model passed."""
    return ready(request.app.state)


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
    **error_responses()})
async def metrics(metrics: MetricsDep, registry: RegistryDep, batcher: BatcherDep, settings: SettingsDep) -> Response:
    running = await run_in_threadpool(running_builds, Home(settings.home))  # reads job and progress files
    builds = tuple((b.index, b.job, b.blocks) for b in running)
    return Response(metrics.render(registry.served(), builds), media_type=CONTENT_TYPE_LATEST)
