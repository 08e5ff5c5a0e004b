"""HTTP request and response bodies (pydantic). Kept apart from the engine's dataclasses."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    question: str = Field(min_length=1, description="the question; at most max_question_chars characters")
    model: str | None = Field(None, description="model name or name/version; the default model if absent")
    reader_beam_size: int | None = Field(None, ge=1, description="blocks the reader reads")


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    query: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, description="blocks to return")
    model: str | None = None


class BlockOut(BaseModel):
    id: str
    title: str
    text: str
    score: float = Field(description="relevance score: inner product of query and block embeddings")


class RankedBlockOut(BlockOut):
    rank: int


class CandidateOut(BaseModel):
    answer: str
    score: float
    start_char: int
    end_char: int
    block_id: str


class AnswerResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    answer: str
    score: float = Field(description="span score + relevance score of the answer (REALM §3.4)")
    start_char: int = Field(description="block.text[start_char:end_char] is the answer")
    end_char: int
    block: BlockOut
    candidates: list[CandidateOut]
    model: str
    index: str
    timings_ms: dict[str, float]


class RetrieveResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    blocks: list[RankedBlockOut]
    model: str
    index: str
