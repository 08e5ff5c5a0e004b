"""A fake engine whose calls wait on a :class:`threading.Event`: holds the worker thread so that tests can
fill the queue, pass deadlines and shut down with work queued. The readiness check's question passes without
waiting (the app checks readiness in the background from its start)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from service.engine import Answer, Retrieval
from service.errors import InvalidInput
from service.readiness import CHECK_QUESTION
from tests.service.fake_engine import FakeEngine


class BlockingEngine(FakeEngine):
    def __init__(self, model_ref: str = "fake/1") -> None:
        super().__init__(model_ref)
        self.gate = threading.Event()
        self.entered = threading.Event()  # set when a call is waiting at the gate

    def _wait(self) -> None:
        self.entered.set()
        assert self.gate.wait(30), "test never opened the gate"

    def answer(self, questions: list[str], reader_beam_size: int, prepared: Sequence[object] | None = None,
               ) -> list[Answer]:
        if questions == [CHECK_QUESTION]:
            return super().answer(questions, reader_beam_size)
        self._wait()
        if any("bad" in q for q in questions):
            raise InvalidInput("question has no tokens", param="question")
        return super().answer(questions, reader_beam_size)

    def retrieve(self, queries: list[str], k: int, prepared: Sequence[object] | None = None) -> list[Retrieval]:
        self._wait()
        return super().retrieve(queries, k)
