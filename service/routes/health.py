"""``GET /healthz`` (the process is alive) and ``GET /readyz`` (a model answers through its index)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.deps import RegistryDep
from service.errors import NotReady

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(registry: RegistryDep) -> dict[str, object]:
    if not registry.engines:
        raise NotReady("no model is loaded")
    for engine in registry.engines.values():
        await run_in_threadpool(engine.check)
    return {"status": "ready", "models": [e.model_ref for e in registry.engines.values()]}
