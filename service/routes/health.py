"""``GET /healthz`` (alive), ``GET /readyz`` (every served model answers through its index), ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from index.home import Home
from index.jobs import running_builds
from service.deps import BatcherDep, MetricsDep, RegistryDep, SettingsDep
from service.errors import NotReady
from service.schemas import error_responses

router = APIRouter()


@router.get("/healthz", responses=error_responses(503))
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", responses=error_responses(503))
async def readyz(registry: RegistryDep) -> dict[str, object]:
    engines = registry.served()
    if not engines:
        raise NotReady("no model is loaded")
    for engine in engines:
        await run_in_threadpool(engine.check)
    return {"status": "ready", "models": [e.model_ref for e in engines]}


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
    **error_responses()})
async def metrics(metrics: MetricsDep, registry: RegistryDep, batcher: BatcherDep, settings: SettingsDep) -> Response:
    running = await run_in_threadpool(running_builds, Home(settings.home))  # reads job and progress files
    builds = tuple((b.index, b.job, b.blocks) for b in running)
    return Response(metrics.render(registry.served(), batcher.depth(), builds), media_type=CONTENT_TYPE_LATEST)
