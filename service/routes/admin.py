"""Admin routes (``Authorization: Bearer <admin_token>``; disabled without a token): load and unload
model versions, activate (swap to, or roll back to) an index version, enqueue an index build for the
worker. A failed load or swap leaves what serves untouched and answers with the reason."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.deps import AdminDep, RegistryDep, SettingsDep
from service.registry import enqueue_build
from service.schemas import BuildRequest, BuildResponse, IndexActivated

router = APIRouter(dependencies=[AdminDep])


@router.post("/v1/models/{name}/versions/{version}/load")
async def load(name: str, version: int, registry: RegistryDep) -> dict[str, str]:
    engine = await run_in_threadpool(registry.load, name, version)
    return {"model": engine.model_ref, "index": engine.index_ref, "state": "ready"}


@router.post("/v1/models/{name}/versions/{version}/unload")
async def unload(name: str, version: int, registry: RegistryDep) -> dict[str, str]:
    registry.unload(name, version)
    return {"model": f"{name}/{version}", "state": "unloaded"}


@router.post("/v1/indexes/{name}/versions/{version}/activate", response_model=IndexActivated)
async def activate(name: str, version: int, registry: RegistryDep) -> IndexActivated:
    engines = await run_in_threadpool(registry.activate_index, name, version)
    return IndexActivated(index=f"{name}/{version}", served_by=[e.model_ref for e in engines])


@router.post("/v1/indexes/{name}/builds", response_model=BuildResponse, status_code=202)
async def build(name: str, req: BuildRequest, settings: SettingsDep) -> BuildResponse:
    job = enqueue_build(settings.home, name, req.model, req.corpus, req.factory)
    return BuildResponse(job=job, index=name, state="queued")
