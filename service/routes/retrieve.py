"""``POST /retrieve``: the top-k blocks of a query by relevance score, through the batcher."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import BatcherDep, RegistryDep, SettingsDep
from service.errors import InvalidInput
from service.routes.common import check_text, timeout_s
from service.schemas import QUEUED_ERRORS, RankedBlockOut, RetrieveRequest, RetrieveResponse

router = APIRouter()


@router.post("/retrieve", response_model=RetrieveResponse, responses=QUEUED_ERRORS)
async def retrieve(req: RetrieveRequest, settings: SettingsDep, registry: RegistryDep,
                   batcher: BatcherDep) -> RetrieveResponse:
    check_text(req.query, "query", settings)
    k = req.k or settings.default_k
    if k > settings.max_k:
        raise InvalidInput(f"k must be at most {settings.max_k}", param="k")
    engine = registry.get(req.model)
    prepared = engine.validate_query(req.query)  # a query with no wordpieces would retrieve arbitrary blocks
    r = await batcher.retrieve(engine, req.query, k, timeout_s(req.timeout_ms, settings), prepared)
    return RetrieveResponse(
        blocks=[RankedBlockOut(id=b.block.id, title=b.block.title, text=b.block.text, score=b.score, rank=b.rank)
                for b in r.blocks],
        model=engine.model_ref, index=r.index_ref or engine.index_ref)
