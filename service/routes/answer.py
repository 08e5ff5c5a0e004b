"""``POST /answer``: retrieve-then-read one question, through the batcher."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import BatcherDep, RegistryDep, SettingsDep
from service.engine import ScoredBlock
from service.errors import InvalidInput
from service.routes.common import check_text, timeout_s
from service.schemas import QUEUED_ERRORS, AnswerRequest, AnswerResponse, BlockOut, CandidateOut

router = APIRouter()


def _block(b: ScoredBlock) -> BlockOut:
    return BlockOut(id=b.block.id, title=b.block.title, text=b.block.text, score=b.score)


@router.post("/answer", response_model=AnswerResponse, responses=QUEUED_ERRORS)
async def answer(req: AnswerRequest, settings: SettingsDep, registry: RegistryDep,
                 batcher: BatcherDep) -> AnswerResponse:
    check_text(req.question, "question", settings)
    beam = req.reader_beam_size or settings.default_reader_beam_size
    if beam > settings.max_reader_beam_size:
        raise InvalidInput(f"reader_beam_size must be at most {settings.max_reader_beam_size}",
                           param="reader_beam_size")
    engine = registry.get(req.model)
    prepared = engine.validate_question(req.question)  # before it joins a batch: a bad one never costs the others
    a = await batcher.answer(engine, req.question, beam, timeout_s(req.timeout_ms, settings), prepared)
    return AnswerResponse(
        answer=a.best.answer, score=a.best.score, start_char=a.best.start_char, end_char=a.best.end_char,
        block=_block(a.best.block),
        candidates=[CandidateOut(answer=c.answer, score=c.score, start_char=c.start_char, end_char=c.end_char,
                                 block_id=c.block.block.id, block=_block(c.block)) for c in a.candidates],
        model=engine.model_ref, index=a.index_ref or engine.index_ref, timings_ms=a.timings_ms)
