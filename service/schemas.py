"""HTTP request and response bodies (pydantic). Kept apart from the engine's dataclasses."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

TIMEOUT_DOC = "deadline, ms from when the request is queued (at most request_timeout_ms)"


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    question: str = Field(min_length=1, description="the question; at most max_question_chars characters")
    model: str | None = Field(None, description="model name or name/version; the default model if absent")
    reader_beam_size: int | None = Field(None, ge=1, description="blocks the reader reads")
    timeout_ms: float | None = Field(None, gt=0, description=TIMEOUT_DOC)


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    query: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, description="blocks to return")
    model: str | None = None
    timeout_ms: float | None = Field(None, gt=0, description=TIMEOUT_DOC)


class BlockOut(BaseModel):
    id: str
    title: str
    text: str
    score: float = Field(description="relevance score: inner product of query and block embeddings")


class RankedBlockOut(BlockOut):
    rank: int


class CandidateOut(BaseModel):
    answer: str
    score: float = Field(description="span score + relevance score (REALM §3.4)")
    start_char: int = Field(description="block.text[start_char:end_char] is the answer")
    end_char: int
    block_id: str = Field(description="block.id, kept for clients that read it")
    block: BlockOut = Field(description="the block read")


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


class ModelVersionOut(BaseModel):
    version: int
    state: str = Field(description="ready | available | unloaded | failed")
    index: str | None = Field(None, description="index name/version served, when ready")
    error: str | None = Field(None, description="why the last load failed, when failed")


class ModelOut(BaseModel):
    name: str
    default: bool
    versions: list[ModelVersionOut]


class ModelsResponse(BaseModel):
    models: list[ModelOut]


class IndexVersionOut(BaseModel):
    version: int
    embedder: str = Field(description="model name/version whose block embedder built it")
    blocks: int
    created_at: str
    served_by: list[str] = Field(description="model versions serving this index version")


class IndexOut(BaseModel):
    name: str
    versions: list[IndexVersionOut]


class IndexesResponse(BaseModel):
    indexes: list[IndexOut]


class IndexActivated(BaseModel):
    index: str = Field(description="index name/version now serving")
    served_by: list[str] = Field(description="model versions that serve it")


class BuildRequest(BaseModel):
    model: str = Field(description="model name or name/version whose block embedder embeds the corpus")
    corpus: str = Field(description="JSON Lines corpus path, as the index worker sees it")
    factory: str = Field("Flat", description="faiss index_factory string: Flat, IVF{nlist},Flat, "
                                             "IVF{nlist},PQ{m}, HNSW32, ...")


class BuildResponse(BaseModel):
    job: str
    index: str
    state: str
