"""Admin routes (``Authorization: Bearer <admin_token>``; disabled without a token): load and unload
model versions. A failed load leaves what serves untouched and answers with the reason."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.deps import AdminDep, RegistryDep

router = APIRouter(prefix="/v1/models", dependencies=[AdminDep])


@router.post("/{name}/versions/{version}/load")
async def load(name: str, version: int, registry: RegistryDep) -> dict[str, str]:
    engine = await run_in_threadpool(registry.load, name, version)
    return {"model": engine.model_ref, "index": engine.index_ref, "state": "ready"}


@router.post("/{name}/versions/{version}/unload")
async def unload(name: str, version: int, registry: RegistryDep) -> dict[str, str]:
    registry.unload(name, version)
    return {"model": f"{name}/{version}", "state": "unloaded"}
