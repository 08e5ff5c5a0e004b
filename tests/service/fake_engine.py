"""A small engine for route tests: word-overlap retrieval over a few blocks, the answer is a block's first word."""

from __future__ import annotations

from collections.abc import Sequence

from index.block_store import Block
from service.engine import Answer, Candidate, Retrieval, ScoredBlock
from service.errors import InvalidInput

BLOCKS = [
    Block("b0", "Broncos", "Denver Broncos won Super Bowl 50."),
    Block("b1", "Panthers", "Carolina Panthers lost Super Bowl 50."),
    Block("b2", "Notre Dame", "Notre Dame is a Catholic university."),
]


class FakeEngine:
    def __init__(self, model_ref: str = "fake/1", index_ref: str = "fake-index/1") -> None:
        self.model_ref, self.index_ref = model_ref, index_ref
        self.calls: list[tuple[str, list[str], int]] = []
        self.ready = True
        self.block_count = len(BLOCKS)
        self.reader_seq_len = 64

    max_question_words = 20

    def validate_question(self, question: str) -> None:
        self.validate_query(question, "question")
        if len(question.split()) > self.max_question_words:
            raise InvalidInput(f"question has more than {self.max_question_words} words", param="question")

    def validate_query(self, query: str, param: str = "query") -> None:
        if not any(c.isalnum() for c in query):
            raise InvalidInput(f"{param} has no wordpieces", param=param)

    def _rank(self, query: str, k: int) -> list[ScoredBlock]:
        words = set(query.lower().split())
        scored = sorted(((len(words & set(b.text.lower().split())), i) for i, b in enumerate(BLOCKS)),
                        key=lambda x: (-x[0], x[1]))
        return [ScoredBlock(BLOCKS[i], float(s), r + 1) for r, (s, i) in enumerate(scored[:k])]

    def retrieve(self, queries: list[str], k: int, prepared: Sequence[object] | None = None) -> list[Retrieval]:
        self.calls.append(("retrieve", queries, k))
        return [Retrieval(self._rank(q, k), {"embed_ms": 0.0}) for q in queries]

    def answer(self, questions: list[str], reader_beam_size: int, prepared: Sequence[object] | None = None,
               ) -> list[Answer]:
        self.calls.append(("answer", questions, reader_beam_size))
        if not self.ready:
            raise RuntimeError("fake engine is not ready")
        out = []
        for q in questions:
            cands = []
            for sb in self._rank(q, reader_beam_size):
                word = sb.block.text.split()[0]
                cands.append(Candidate(word, sb.score, 0, len(word), sb))
            out.append(Answer(cands[0], cands, {"read_ms": 0.0}))
        return out

    def swap_index(self, index: object) -> str:
        old, self.index_ref = self.index_ref, getattr(index, "ref", str(index))
        return old

    def check(self) -> None:
        from service.errors import NotReady

        if not self.ready:
            raise NotReady("fake engine is not ready")
