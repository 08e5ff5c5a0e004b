"""The QA engine: question → query embedding → MIPS over the index → reader → answer.

``Engine`` is the protocol the HTTP layer calls (tests use a small fake of it); :class:`QAEngine`
implements it over a loaded :class:`realm_core.model_dir.QAModel` and
:class:`index.version.IndexVersion`. Both calls take a batch of questions and answer each as if alone.
:meth:`QAEngine.swap_index` replaces the index version between batches: a batch runs under the engine's
lock and reads the one reference once, so it finishes on the version it started with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from index.block_store import Block
from index.faiss_index import search, search_first_rows, to_searcher
from index.hybrid import hybrid_search, open_bm25
from index.resident import Warmup, warm_index_file
from index.version import IndexVersion, version_files
from realm_core import qa
from realm_core.model_dir import QAModel, embed_texts
from realm_core.tokenizer import Pieces
from service.errors import InvalidInput

log = logging.getLogger(__name__)

SMOKE_ROWS = 4096  # rows a swap's smoke search scans (Flat, SQ: the full index is not read for it)


@dataclass
class ScoredBlock:
    block: Block
    score: float  # relevance score: inner product of query and block embeddings
    rank: int  # 1 = best
    fused: float | None = None  # the fused retrieval score on a hybrid index version (index.fusion), else None


@dataclass
class Candidate:
    answer: str
    score: float  # span score + relevance_scale × relevance score (REALM §3.4)
    start_char: int  # in block.text, end exclusive
    end_char: int
    block: ScoredBlock


@dataclass(frozen=True)
class ReadStats:
    """The reader passes of one engine call (shared by the answers of that call)."""

    pass_rows: tuple[int, ...]  # rows (question × block pairs) of each reader pass
    tokens: int  # tokens of all rows, padding excluded
    padded_tokens: int  # tokens the passes computed, padding included


@dataclass
class Answer:
    best: Candidate
    candidates: list[Candidate]  # best span of each block read, best first
    # This request's share of each stage of its engine call (ms): embed/search/fetch split evenly over the
    # batch's questions, read in proportion to the reader tokens of the question's rows (padding included).
    timings_ms: dict[str, float] = field(default_factory=dict)
    index_ref: str = ""  # the index version this answer came from ("" if the engine does not say)
    read_stats: ReadStats | None = None  # the reader passes of the call that answered it (None: not said)


@dataclass(frozen=True)
class Prepared:
    """A question or query cut into wordpieces once, when it is checked before it joins a batch
    (:meth:`QAEngine.validate_question`), so that its engine call does not cut it again."""

    query: Pieces  # for the query embedder's tokenizer
    reader: Pieces | None = None  # for the reader's tokenizer, as the reader sees the question (None: a query)


@dataclass
class Retrieval:
    blocks: list[ScoredBlock]
    timings_ms: dict[str, float] = field(default_factory=dict)
    index_ref: str = ""  # the index version searched ("" if the engine does not say)


class Engine(Protocol):
    @property
    def model_ref(self) -> str: ...

    @property
    def index_ref(self) -> str: ...

    @property
    def block_count(self) -> int: ...  # blocks in the index served

    @property
    def reader_seq_len(self) -> int: ...  # tokens per reader row (the batcher's token budget counts these)

    # Checks before a text joins a batch (InvalidInput naming the field); what they return (None: nothing)
    # goes back to the engine as that text's ``prepared`` in its retrieve/answer call.
    def validate_question(self, question: str) -> object: ...

    def validate_query(self, query: str) -> object: ...

    def retrieve(self, queries: list[str], k: int, prepared: Sequence[object] | None = None) -> list[Retrieval]: ...

    def answer(self, questions: list[str], reader_beam_size: int, prepared: Sequence[object] | None = None,
               ) -> list[Answer]: ...

    def swap_index(self, index: IndexVersion) -> str: ...  # serve another index version; returns the old ref


def check_pair(model: QAModel, index: IndexVersion) -> None:
    """A model serves only indexes its own block embedder built (the same block embedder id, by content; for an
    index without one, the model version it names), of its embedding dimension.

    Raises:
        ValueError: the index was built by another embedder, or its dimension differs.
    """
    m = index.manifest
    same = m.embedder_id == model.embedder_id if m.embedder_id and model.embedder_id else m.embedder == model.ref
    if not same:
        raise ValueError(f"index {index.ref} was built by the block embedder of {m.embedder}, not by {model.ref}'s")
    if index.manifest.dim != model.query.embedder.config.dim:
        raise ValueError(f"index {index.ref} has dim {index.manifest.dim}, "
                         f"model {model.ref} embeds to {model.query.embedder.config.dim}")


class QAEngine:
    """Retrieve-then-read over one model version and one index version built by its block embedder.

    Raises (constructor):
        ValueError: the index was built by another embedder, or its dimension differs.
    """

    def __init__(self, model: QAModel, index: IndexVersion, max_pass_tokens: int = qa.MAX_PASS_TOKENS) -> None:
        check_pair(model, index)
        self.model, self.index = model, index
        self.warmer = warm_index_file  # (index file, bytes the serving version keeps) -> Warmup
        self.last_warmup = self.warm(index)  # of the index last opened or swapped in
        # what searches: the index, or its GPU copy with its own GPU resources (used under _lock only)
        self._searcher = to_searcher(index.index)
        self.max_pass_tokens = max_pass_tokens  # padded tokens per reader pass (qa.read_beams)
        self._hybrid = open_bm25(index)  # (BM25 part, fusion rule) of a hybrid version, else None
        self._lock = threading.Lock()  # one batch at a time: torch already uses every core; a swap waits for it

    @property
    def model_ref(self) -> str:
        return self.model.ref

    @property
    def index_ref(self) -> str:
        return self.index.ref

    @property
    def block_count(self) -> int:
        return self.index.manifest.count

    @property
    def reader_seq_len(self) -> int:
        return self.model.reader_seq_len

    def question_pieces(self, questions: list[str], query_pieces: list[Pieces] | None = None) -> list[Pieces]:
        """Reader wordpieces of each question: of the text as typed, or for REALM models of the query
        embedder's input decoded again (``QAModel.reader_question_texts``, HF ``RealmRetriever.__call__``;
        ``query_pieces``: the questions' query-embedder wordpieces, if already cut).

        Raises:
            InvalidInput: a question with no wordpieces or more than ``max_question_tokens``.
        """
        tok = self.model.reader_tokenizer
        try:
            pieces = qa.question_pieces(tok, questions, self.model.max_question_tokens)
        except qa.QuestionError as e:
            raise InvalidInput(str(e), param="question") from None
        if self.model.reader_question == "text":
            return pieces
        return tok.pieces(self.model.reader_question_texts(questions, query_pieces))

    def validate_question(self, question: str) -> Prepared:
        """What :meth:`answer` would refuse, checked before the question joins a batch (tokenizing only): no
        wordpieces for the query embedder or the reader, more than ``max_question_tokens``. Returns its
        wordpieces, which :meth:`answer` takes as ``prepared`` instead of cutting the question again.

        Raises:
            InvalidInput: naming ``question``.
        """
        query = self.validate_query(question, "question").query
        return Prepared(query, self.question_pieces([question], [query])[0])

    def validate_query(self, query: str, param: str = "query") -> Prepared:
        """A query with no wordpieces (only control, format or zero-width characters) embeds as ``[CLS]
        [SEP]`` and would retrieve arbitrary blocks with confident scores. Returns its query-embedder
        wordpieces (``prepared`` for :meth:`retrieve`).

        Raises:
            InvalidInput: naming ``param``.
        """
        pieces = self.model.query.tokenizer.pieces([query])[0]
        if not pieces.ids:
            raise InvalidInput(f"{param} has no wordpieces (only blank, control or zero-width characters)",
                               param=param)
        return Prepared(pieces)

    @staticmethod
    def _prepared(prepared: Sequence[object] | None, n: int) -> list[Prepared] | None:
        """``prepared`` if it holds one :class:`Prepared` per text (what this engine's checks returned)."""
        if prepared is None or len(prepared) != n or not all(isinstance(p, Prepared) for p in prepared):
            return None
        return list(prepared)  # type: ignore[arg-type]

    def retrieve_blocks(self, queries: list[str], k: int, timings: dict[str, float], pieces: bool = False,
                        query_pieces: list[Pieces] | None = None) -> list[list[ScoredBlock]]:
        """The retrieval step (call under the lock): embed the queries (``query_pieces``: their query-embedder
        wordpieces, if already cut), MIPS over the served index, fetch
        the top ``k`` blocks of each, best first, with ``pieces`` their reader wordpieces where the block store
        keeps them for this model's reader tokenizer. Adds ``embed_ms``, ``search_ms``, ``fetch_ms`` to
        ``timings``; on a hybrid version (a BM25 part) MIPS and BM25 lists are fused (``index.hybrid``, adding
        ``bm25_ms`` and ``fuse_ms``) and each block keeps its relevance score."""
        t0 = time.perf_counter()
        xq = embed_texts(self.model.query, queries, pieces=query_pieces).numpy()
        t1 = time.perf_counter()
        F = None
        if self._hybrid is None:
            D, I = search(self._searcher[0], xq, k)
        else:  # dense and BM25 lists fused; D stays the relevance score, F the fused score (index.hybrid)
            D, I, F = hybrid_search(self._searcher[0], self.index.index, *self._hybrid, xq, queries, k, timings)
        t2 = time.perf_counter()
        rows = [int(r) for r in I.ravel() if r >= 0]
        blocks = iter(self.index.blocks.get(rows, self.model.reader_tokenizer.content_id if pieces else None))
        out = [[ScoredBlock(next(blocks), float(D[q, j]), j + 1, None if F is None else float(F[q, j]))
                for j in range(I.shape[1]) if I[q, j] >= 0] for q in range(I.shape[0])]
        timings.setdefault("search_ms", (t2 - t1) * 1e3)
        timings.update(embed_ms=(t1 - t0) * 1e3, fetch_ms=(time.perf_counter() - t2) * 1e3)
        return out

    @torch.no_grad()
    def retrieve(self, queries: list[str], k: int, prepared: Sequence[object] | None = None) -> list[Retrieval]:
        """Top-``k`` blocks of each query, best first; each query's timings are its share (1/len(queries)).
        ``prepared``: what :meth:`validate_query` returned for each query (its wordpieces; not cut again)."""
        timings: dict[str, float] = {}
        ready = self._prepared(prepared, len(queries))
        pieces = None if ready is None else [p.query for p in ready]
        with self._lock:
            found = self.retrieve_blocks(queries, k, timings, query_pieces=pieces)
            ref = self.index.ref
        return [Retrieval(b, {k: v / len(found) for k, v in timings.items()}, ref) for b in found]

    @torch.no_grad()
    def answer(self, questions: list[str], reader_beam_size: int, prepared: Sequence[object] | None = None,
               ) -> list[Answer]:
        """Answer each question from its top ``reader_beam_size`` blocks (REALM §3.4, HF
        ``RealmForOpenQA.forward``): one reader pass over every (question, block) row of the batch
        (:func:`realm_core.qa.read_beams`), then each question's answer by :func:`realm_core.qa.answer`.
        ``prepared``: what :meth:`validate_question` returned for each question (its wordpieces, not cut
        again); without it the questions are checked and cut here.

        Raises:
            InvalidInput: a question with no wordpieces or more than ``max_question_tokens``.
        """
        ready = self._prepared(prepared, len(questions))
        if ready is None or any(p.reader is None for p in ready):
            ready = None
            q_pieces = self.question_pieces(questions)
        else:
            q_pieces = [p.reader for p in ready]  # type: ignore[misc]
        timings: dict[str, float] = {}
        with self._lock:
            found = self.retrieve_blocks(questions, reader_beam_size, timings, pieces=True,
                                         query_pieces=None if ready is None else [p.query for p in ready])
            t0 = time.perf_counter()
            batch = self.read(q_pieces, found)
            scale = self.model.reader.config.relevance_scale
            results = [self._answer(blocks, qa.answer(r, scale)) for blocks, r in zip(found, batch.readings)]
            read_ms = (time.perf_counter() - t0) * 1e3
            ref = self.index.ref
        stats = ReadStats(tuple(batch.pass_rows), batch.tokens, batch.padded_tokens)
        n = len(results)
        for a, r in zip(results, batch.readings):
            a.timings_ms = {k: v / n for k, v in timings.items()}
            a.timings_ms["read_ms"] = read_ms * r.padded_tokens / max(batch.padded_tokens, 1)
            a.index_ref, a.read_stats = ref, stats
        return results

    @torch.no_grad()
    def read(self, questions: list[Pieces], found: list[list[ScoredBlock]]) -> qa.BatchReading:
        """Score every span of every question's blocks in length-grouped reader passes of at most
        ``max_pass_tokens`` padded tokens (blocks without stored wordpieces are tokenised here), with the
        model's reader-input rules (HF ``RealmRetriever.__call__``,
        ``RealmForOpenQA.forward``'s ``block_mask``, ``RealmReader.forward``). Each block's relevance score is
        its inner product, or on a hybrid index its fused score where the model's ``hybrid_relevance`` is
        ``"fused"`` (:mod:`realm_core.model_dir`)."""
        m = self.model
        fused = m.hybrid_relevance == "fused"
        beams = [[qa.BeamBlock(b.block.text, b.fused if fused and b.fused is not None else b.score, b.block.pieces)
                  for b in blocks] for blocks in found]
        return qa.read_beams(m.reader, m.reader_tokenizer, questions, beams, m.reader_seq_len,
                             m.reader_truncation, self.max_pass_tokens)

    @staticmethod
    def _answer(blocks: list[ScoredBlock], r: qa.QAResult) -> Answer:
        def candidate(c: qa.SpanChoice) -> Candidate:
            return Candidate(c.text, c.score, c.start_char, c.end_char, blocks[c.row])

        return Answer(candidate(r.best), sorted((candidate(c) for c in r.per_block), key=lambda c: -c.score))

    def swap_index(self, index: IndexVersion) -> str:
        """Serve ``index`` from the next batch on: check it (embedder, dimension), bring its index file into
        memory (:meth:`warm`), run one real search over its first :data:`SMOKE_ROWS` rows and fetch the block
        found, then replace the one reference under the batch lock, so the batch in flight finishes on the old
        version and every later one runs on the new; the old version is then closed. Everything before the
        swap runs outside the batch lock: the old version serves meanwhile. Returns the old ref.

        Raises:
            ValueError: the new index fails a check; the old one keeps serving.
            OSError: its index file cannot be read while warming.
        """
        check_pair(self.model, index)
        self.last_warmup = self.warm(index)
        hybrid = open_bm25(index)
        searcher = to_searcher(index.index)
        xq = embed_texts(self.model.query, ["what is this?"]).numpy()
        _, I = search_first_rows(searcher[0], xq, 1, SMOKE_ROWS)
        if I.size == 0 or I[0, 0] < 0:
            raise ValueError(f"index {index.ref}: a smoke search returned no block")
        index.blocks.get([int(I[0, 0])])
        with self._lock:
            old = self.index
            self.index, self._searcher, self._hybrid = index, searcher, hybrid
        old.blocks.close()  # no batch holds it any more: they all run under _lock
        log.info("%s: swapped index %s -> %s", self.model.ref, old.ref, index.ref)
        return old.ref

    def warm(self, index: IndexVersion) -> Warmup:
        """Bring ``index``'s memory-mapped FAISS file (at start or before a swap) into memory (read ahead and mapped,
        :func:`index.resident.warm_index_file`) within the memory left beside the version serving, so that
        no request pays for the disk read; a kind faiss read into memory on open needs nothing. Called without
        the batch lock. Where RAM cannot hold both versions, part of the file stays on disk (logged)."""
        serving = version_files(self.index.root).faiss_index
        keep = serving.stat().st_size if self.index is not index and serving.exists() else 0
        w = self.warmer(version_files(index.root).faiss_index, keep)
        log.info("%s: index %s warmed (%s): %.2f of %.2f GiB in %.1f s", self.model.ref, index.ref, w.method,
                 w.warmed / 2**30, w.size / 2**30, w.seconds)
        return w

