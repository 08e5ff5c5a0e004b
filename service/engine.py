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
from dataclasses import dataclass, field
from typing import Protocol

import torch

from index.block_store import Block
from index.faiss_index import search, to_searcher
from index.version import IndexVersion
from realm_core.model_dir import QAModel, embed_texts
from realm_core.reader import select_spans
from realm_core.tokenizer import PairBatch, Pieces
from service.errors import InvalidInput, NotReady

log = logging.getLogger(__name__)


@dataclass
class ScoredBlock:
    block: Block
    score: float  # relevance score: inner product of query and block embeddings
    rank: int  # 1 = best


@dataclass
class Candidate:
    answer: str
    score: float  # span score + relevance_scale × relevance score (REALM §3.4)
    start_char: int  # in block.text, end exclusive
    end_char: int
    block: ScoredBlock


@dataclass
class Answer:
    best: Candidate
    candidates: list[Candidate]  # best span of each block read, best first
    timings_ms: dict[str, float] = field(default_factory=dict)
    index_ref: str = ""  # the index version this answer came from ("" if the engine does not say)


@dataclass
class Reading:
    """The reader's pass over one question's blocks (HF ``RealmForOpenQA.forward``'s reader step)."""

    inputs: PairBatch  # (reader_beam, seq_len) rows [CLS] question [SEP] block [SEP] [PAD]...
    logits: torch.Tensor  # (reader_beam, num_spans) span score + relevance_scale × relevance score
    starts: torch.Tensor  # (num_spans,) token positions in the rows, end inclusive
    ends: torch.Tensor


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

    def validate_question(self, question: str) -> None: ...  # InvalidInput before the question joins a batch

    def validate_query(self, query: str) -> None: ...  # InvalidInput before the query joins a batch

    def retrieve(self, queries: list[str], k: int) -> list[Retrieval]: ...

    def answer(self, questions: list[str], reader_beam_size: int) -> list[Answer]: ...

    def check(self) -> None: ...

    def swap_index(self, index: IndexVersion) -> str: ...  # serve another index version; returns the old ref


def check_pair(model: QAModel, index: IndexVersion) -> None:
    """A model serves only indexes its own block embedder built, of its embedding dimension.

    Raises:
        ValueError: the index was built by another embedder, or its dimension differs.
    """
    if index.manifest.embedder != model.ref:
        raise ValueError(f"index {index.ref} was built by {index.manifest.embedder}, not by {model.ref}")
    if index.manifest.dim != model.query.embedder.config.dim:
        raise ValueError(f"index {index.ref} has dim {index.manifest.dim}, "
                         f"model {model.ref} embeds to {model.query.embedder.config.dim}")


class QAEngine:
    """Retrieve-then-read over one model version and one index version built by its block embedder.

    Raises (constructor):
        ValueError: the index was built by another embedder, or its dimension differs.
    """

    def __init__(self, model: QAModel, index: IndexVersion, read_chunk_rows: int = 16) -> None:
        check_pair(model, index)
        self.model, self.index = model, index
        # what searches: the index, or its GPU copy with its own GPU resources (used under _lock only)
        self._searcher = to_searcher(index.index)
        self.read_chunk_rows = read_chunk_rows
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

    def question_pieces(self, questions: list[str]) -> list[Pieces]:
        """Reader wordpieces of each question: of the text as typed, or for REALM models of the query
        embedder's input decoded again (``QAModel.reader_question_texts``, HF ``RealmRetriever.__call__``).

        Raises:
            InvalidInput: a question with no wordpieces or more than ``max_question_tokens``.
        """
        tok = self.model.reader_tokenizer
        pieces = tok.pieces(questions)
        for p in pieces:
            if not p.ids:
                raise InvalidInput("question has no tokens", param="question")
            if len(p.ids) > self.model.max_question_tokens:
                raise InvalidInput(f"question has {len(p.ids)} tokens, more than the "
                                   f"{self.model.max_question_tokens} allowed", param="question")
        if self.model.reader_question == "text":
            return pieces
        return tok.pieces(self.model.reader_question_texts(questions))

    def validate_question(self, question: str) -> None:
        """What :meth:`answer` would refuse, checked before the question joins a batch (tokenizing only): no
        wordpieces for the query embedder or the reader, more than ``max_question_tokens``.

        Raises:
            InvalidInput: naming ``question``.
        """
        self.validate_query(question, "question")
        self.question_pieces([question])

    def validate_query(self, query: str, param: str = "query") -> None:
        """A query with no wordpieces (only control, format or zero-width characters) embeds as ``[CLS]
        [SEP]`` and would retrieve arbitrary blocks with confident scores.

        Raises:
            InvalidInput: naming ``param``.
        """
        if not self.model.query.tokenizer.pieces([query])[0].ids:
            raise InvalidInput(f"{param} has no wordpieces (only blank, control or zero-width characters)",
                               param=param)

    def _retrieve(self, queries: list[str], k: int, timings: dict[str, float]) -> list[list[ScoredBlock]]:
        t0 = time.perf_counter()
        xq = embed_texts(self.model.query, queries).numpy()
        t1 = time.perf_counter()
        D, I = search(self._searcher[0], xq, k)
        t2 = time.perf_counter()
        rows = [int(r) for r in I.ravel() if r >= 0]
        blocks = iter(self.index.blocks.get(rows))
        out = [[ScoredBlock(next(blocks), float(d), rank + 1) for rank, (d, r) in enumerate(zip(Ds, Is)) if r >= 0]
               for Ds, Is in zip(D, I)]
        timings.update(embed_ms=(t1 - t0) * 1e3, search_ms=(t2 - t1) * 1e3,
                       fetch_ms=(time.perf_counter() - t2) * 1e3)
        return out

    @torch.no_grad()
    def retrieve(self, queries: list[str], k: int) -> list[Retrieval]:
        """Top-``k`` blocks of each query, best first."""
        timings: dict[str, float] = {}
        with self._lock:
            found = self._retrieve(queries, k, timings)
            ref = self.index.ref
        return [Retrieval(b, dict(timings), ref) for b in found]

    @torch.no_grad()
    def answer(self, questions: list[str], reader_beam_size: int) -> list[Answer]:
        """Answer each question from its top ``reader_beam_size`` blocks (REALM §3.4, HF
        ``RealmForOpenQA.forward``): the reader scores every span of every block, adds the relevance
        score, and the best (block, span) by :func:`realm_core.reader.select_spans` is the answer."""
        q_pieces = self.question_pieces(questions)
        timings: dict[str, float] = {}
        with self._lock:
            found = self._retrieve(questions, reader_beam_size, timings)
            t0 = time.perf_counter()
            results = []
            for q, blocks in zip(q_pieces, found):
                r = self.read(q, blocks)
                results.append(self._pick(blocks, r.logits, r.inputs.block_offsets, r.starts, r.ends))
            timings["read_ms"] = (time.perf_counter() - t0) * 1e3
            ref = self.index.ref
        for a in results:
            a.timings_ms, a.index_ref = dict(timings), ref
        return results

    @torch.no_grad()
    def read(self, question: Pieces, blocks: list[ScoredBlock]) -> Reading:
        """Score every span of one question's blocks (HF ``RealmForOpenQA.forward``: retriever inputs,
        ``block_mask``, ``RealmReader.forward``).

        The rows of one question are padded to their longest, as HF pads the reader beam, so span
        indices agree with the reference; rows are read ``read_chunk_rows`` at a time.
        """
        m = self.model
        tok = m.reader_tokenizer
        enc = tok.encode_pairs([question] * len(blocks), tok.pieces([b.block.text for b in blocks]),
                               m.reader_seq_len, m.reader_truncation)
        rel = torch.tensor([b.score for b in blocks], dtype=torch.float32)
        chunks = []
        for i in range(0, len(blocks), self.read_chunk_rows):
            sl = slice(i, i + self.read_chunk_rows)
            logits, starts, ends = m.reader(enc.input_ids[sl], enc.attention_mask[sl],
                                            enc.token_type_ids[sl], enc.block_mask[sl], rel[sl])
            chunks.append(logits.float())
        return Reading(enc, torch.cat(chunks), starts, ends)

    @staticmethod
    def _pick(blocks: list[ScoredBlock], logits: torch.Tensor, offsets: torch.Tensor,
              starts: torch.Tensor, ends: torch.Tensor) -> Answer:
        """logits: (reader_beam, num_spans); offsets: (reader_beam, seq_len, 2) block character offsets."""

        def candidate(b: int, span: int, score: float) -> Candidate:
            s, e = int(offsets[b, starts[span], 0]), int(offsets[b, ends[span], 1])
            return Candidate(blocks[b].block.text[s:e], score, s, e, blocks[b])

        block_idx, span_idx = select_spans(logits[None])
        bi, si = int(block_idx[0]), int(span_idx[0])
        best = candidate(bi, si, float(logits[bi, si]))
        per_block = logits.max(dim=1)
        cands = [candidate(b, sp, sc) for b, (sc, sp) in
                 enumerate(zip(per_block.values.tolist(), per_block.indices.tolist()))]
        return Answer(best, sorted(cands, key=lambda c: -c.score))

    def swap_index(self, index: IndexVersion) -> str:
        """Serve ``index`` from the next batch on: check it (embedder, dimension, one real search), then
        replace the one reference under the batch lock, so the batch in flight finishes on the old version
        and every later one runs on the new; the old version is then closed. Returns the old ref.

        Raises:
            ValueError: the new index fails a check; the old one keeps serving.
        """
        check_pair(self.model, index)
        searcher = to_searcher(index.index)
        xq = embed_texts(self.model.query, ["what is this?"]).numpy()
        _, I = search(searcher[0], xq, 1)
        if I.size == 0 or I[0, 0] < 0:
            raise ValueError(f"index {index.ref}: a smoke search returned no block")
        index.blocks.get([int(I[0, 0])])
        with self._lock:
            old = self.index
            self.index, self._searcher = index, searcher
        old.blocks.close()  # no batch holds it any more: they all run under _lock
        log.info("%s: swapped index %s -> %s", self.model.ref, old.ref, index.ref)
        return old.ref

    def check(self) -> None:
        """Readiness: embed, search and read one question for real.

        Raises:
            NotReady: any step fails.
        """
        try:
            self.answer(["what is this?"], 1)
        except Exception as e:  # readiness reports any failure as not ready
            raise NotReady(f"engine check failed: {e}") from e
