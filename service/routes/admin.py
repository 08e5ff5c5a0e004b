"""Admin routes (``Authorization: Bearer <admin_token>``; disabled without a token): load and unload
model versions, activate (swap to, or roll back to) an index version, enqueue an index build for the
worker. A failed load or swap leaves what serves untouched and answers with the reason."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from starlette.concurrency import run_in_threadpool

from service.deps import AdminDep, RegistryDep, SettingsDep
from service.errors import Conflict
from service.registry import enqueue_build
from service.schemas import NAME_PATTERN, BuildRequest, BuildResponse, IndexActivated, error_responses
from service.settings import Settings

router = APIRouter(dependencies=[AdminDep])

Name = Annotated[str, Path(pattern=NAME_PATTERN, description="model or index name")]
Version = Annotated[int, Path(ge=0, le=999_999_999, description="version number")]
AUTH_ERRORS = (401, 403, 404, 413, 422)


def _one_process(settings: Settings, what: str) -> None:
    """A model load or unload changes the process that gets it: refused when several workers serve.

    Raises:
        Conflict: ``settings.workers`` > 1.
    """
    if settings.workers > 1:
        raise Conflict(f"a model {what} would change one of this server's {settings.workers} worker processes; "
                       "serve the models wanted with --model (or one worker) instead")


@router.post("/v1/models/{name}/versions/{version}/load", responses=error_responses(*AUTH_ERRORS, 409))
async def load(name: Name, version: Version, registry: RegistryDep, settings: SettingsDep) -> dict[str, str]:
    _one_process(settings, "load")
    engine = await run_in_threadpool(registry.load, name, version)
    return {"model": engine.model_ref, "index": engine.index_ref, "state": "ready"}


@router.post("/v1/models/{name}/versions/{version}/unload", responses=error_responses(*AUTH_ERRORS, 409))
async def unload(name: Name, version: Version, registry: RegistryDep, settings: SettingsDep) -> dict[str, str]:
    _one_process(settings, "unload")
    await run_in_threadpool(registry.unload, name, version)  # waits on the registry lock: off the event loop
    return {"model": f"{name}/{version}", "state": "unloaded"}


@router.post("/v1/indexes/{name}/versions/{version}/activate", response_model=IndexActivated,
             responses=error_responses(*AUTH_ERRORS, 409))
async def activate(name: Name, version: Version, registry: RegistryDep) -> IndexActivated:
    engines = await run_in_threadpool(registry.activate_index, name, version)
    return IndexActivated(index=f"{name}/{version}", served_by=[e.model_ref for e in engines])


@router.post("/v1/indexes/{name}/builds", response_model=BuildResponse, status_code=202,
             responses=error_responses(*AUTH_ERRORS, 400))
async def build(name: Name, req: BuildRequest, settings: SettingsDep) -> BuildResponse:
    job = await run_in_threadpool(enqueue_build, settings.home, name, req.model, req.corpus, req.factory)
    return BuildResponse(job=job, index=name, state="queued")
