"""HTTP request and response bodies (pydantic), the error body, and the error statuses each route declares in
the OpenAPI document. Kept apart from the engine's dataclasses.

Limits that come from the settings (``max_question_chars``, ``max_reader_beam_size``, ``max_k``) are checked
by the routes and written into the OpenAPI document by :func:`service.openapi.openapi_schema`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TIMEOUT_DOC = "deadline, ms from when the request is queued (at most request_timeout_ms)"
# A model or index name: a letter or digit, then letters, digits, '.', '_' or '-' (never '.' or '..').
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# "name" or "name/version"; the version is ASCII digits only ('²'.isdigit() is true, int('²') fails).
MODEL_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[0-9]{1,9})?$"
MODEL_DOC = "model name or name/version (ASCII digits); the default model if absent"


class ErrorDetail(BaseModel):
    type: str = Field(description="the error's kind: invalid_request, not_found, overloaded, ...")
    message: str = Field(description="what was wrong, naming the field where one was")
    param: str | None = Field(description="the request field at fault, if one is")


class ErrorResponse(BaseModel):
    """The one error body of every error the service answers."""

    error: ErrorDetail


_ERRORS: dict[int, tuple[str, dict[str, str]]] = {
    400: ("unparsable body (not JSON, truncated, nested too deep)", {}),
    401: ("no bearer token", {"WWW-Authenticate": "Bearer"}),
    403: ("wrong bearer token, or admin routes disabled (no admin token configured)", {}),
    404: ("unknown model, version or index", {}),
    409: ("index version refused: it failed its checks, the old version keeps serving", {}),
    413: ("body over max_body_bytes, or text over max_question_chars", {}),
    422: ("invalid input, naming the field", {}),
    429: ("the queue is full; retry after Retry-After seconds", {"Retry-After": "seconds to wait"}),
    500: ("an unexpected failure (logged with the request id); never for bad input", {}),
    503: ("not ready: no model served, the batcher is down, or the server is shutting down", {}),
    504: ("no answer within the request's deadline", {}),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with :class:`ErrorResponse`, 500 always included."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 500}):
        description, headers = _ERRORS[status]
        out[status] = {"model": ErrorResponse, "description": description,
                       "headers": {h: {"description": d, "schema": {"type": "string"}} for h, d in headers.items()}}
    return out


# The errors every route answers that reads a JSON body and runs through the batcher.
QUEUED_ERRORS = error_responses(400, 404, 413, 422, 429, 503, 504)


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    question: str = Field(min_length=1, description="the question; at most max_question_chars characters")
    model: str | None = Field(None, pattern=MODEL_REF_PATTERN, description=MODEL_DOC)
    reader_beam_size: int | None = Field(None, ge=1, description="blocks the reader reads")
    timeout_ms: float | None = Field(None, gt=0, description=TIMEOUT_DOC)


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    query: str = Field(min_length=1, description="the query; at most max_question_chars characters")
    k: int | None = Field(None, ge=1, description="blocks to return")
    model: str | None = Field(None, pattern=MODEL_REF_PATTERN, description=MODEL_DOC)
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
    state: str = Field("ok", description="ok, or unreadable: its manifest cannot be read (error says why)")
    error: str | None = Field(None, description="why the version is unreadable")


class IndexOut(BaseModel):
    name: str
    versions: list[IndexVersionOut]


class IndexesResponse(BaseModel):
    indexes: list[IndexOut]


class IndexActivated(BaseModel):
    index: str = Field(description="index name/version now serving")
    served_by: list[str] = Field(description="model versions that serve it")


class BuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str = Field(pattern=MODEL_REF_PATTERN,
                       description="model name or name/version whose block embedder embeds the corpus")
    corpus: str = Field(min_length=1, max_length=4096,
                        description="JSON Lines corpus path, as the index worker sees it")
    factory: str = Field("Flat", min_length=1, max_length=200,
                         description="faiss index_factory string: Flat, IVF{nlist},Flat, IVF{nlist},PQ{m}, HNSW32, ...")


class BuildResponse(BaseModel):
    job: str
    index: str
    state: str
