"""``GET /v1/models`` and ``GET /v1/indexes``: what the registry holds and what serves (read-only, open)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.deps import RegistryDep, SettingsDep
from service.errors import public_text
from service.registry import describe_indexes
from service.schemas import (
    IndexesResponse,
    IndexOut,
    IndexVersionOut,
    ModelOut,
    ModelsResponse,
    ModelVersionOut,
    error_responses,
)

router = APIRouter()


@router.get("/v1/models", response_model=ModelsResponse, responses=error_responses())
async def list_models(registry: RegistryDep, settings: SettingsDep) -> ModelsResponse:
    default = registry.default_name()
    return ModelsResponse(models=[
        ModelOut(name=name, default=name == default,
                 versions=[ModelVersionOut(version=v.version, state=v.state, index=v.index,
                                           error=v.error and public_text(v.error, settings.home))
                           for v in versions])
        for name, versions in registry.describe().items()])


@router.get("/v1/indexes", response_model=IndexesResponse, responses=error_responses())
async def list_indexes(settings: SettingsDep, registry: RegistryDep) -> IndexesResponse:
    by_name: dict[str, list[IndexVersionOut]] = {}
    found = await run_in_threadpool(describe_indexes, settings.home, registry.served())  # reads manifests
    for i in found:
        by_name.setdefault(i.name, []).append(IndexVersionOut(
            version=i.version, embedder=i.embedder, blocks=i.blocks, created_at=i.created_at, served_by=i.served_by,
            state=i.state, error=i.error))
    return IndexesResponse(indexes=[IndexOut(name=n, versions=vs) for n, vs in by_name.items()])
