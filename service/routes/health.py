"""``GET /healthz`` (alive: the process and its batching task), ``GET /readyz`` (ready to answer, from state and
the last background check: no engine call), ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from index.home import Home
from index.jobs import running_builds
from service.deps import BatcherDep, MetricsDep, ReadinessDep, RegistryDep, SettingsDep
from service.errors import NotReady
from service.schemas import error_responses

router = APIRouter()


@router.get("/healthz", responses=error_responses(503))
async def healthz(batcher: BatcherDep) -> dict[str, str]:
    """503 once the batching task has died: every request would get 503, so the process should be restarted."""
    if batcher.failure is not None:
        raise NotReady(batcher.failure)
    return {"status": "alive"}


@router.get("/readyz", responses=error_responses(503))
async def readyz(registry: RegistryDep, batcher: BatcherDep, readiness: ReadinessDep) -> dict[str, object]:
    ready, why, detail = readiness.state(registry, batcher)
    if not ready:
        raise NotReady(f"not ready: {why}")
    return {"status": "ready", "models": list(detail), "checks": detail}


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
    **error_responses()})
async def metrics(metrics: MetricsDep, registry: RegistryDep, batcher: BatcherDep, settings: SettingsDep) -> Response:
    running = await run_in_threadpool(running_builds, Home(settings.home))  # reads job and progress files
    builds = tuple((b.index, b.job, b.blocks) for b in running)
    return Response(metrics.render(registry.served(), batcher.depth(), builds), media_type=CONTENT_TYPE_LATEST)
