"""service.batching: batched == one at a time (tiny random model), 429 on a full queue without a hang,
504 past the deadline with the job dropped, a faulty job failing alone, shutdown draining the queue."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from service.batching import Batcher, BatchLimits
from service.errors import DeadlinePassed, InvalidInput, NotReady, Overloaded
from service.metrics import Metrics
from service.registry import Registry
from tests.service.blocking_engine import BlockingEngine
from tests.service.fake_engine import FakeEngine
from tests.service.tiny_home import make_tiny_home, questions

T = TypeVar("T")


def run(limits: BatchLimits, body: Callable[[Batcher], Awaitable[T]], metrics: Metrics | None = None) -> T:
    """Run ``body(batcher)`` in a fresh event loop with a started batcher, shut down after."""

    async def main() -> T:
        b = Batcher(limits, metrics)
        b.start()
        try:
            return await asyncio.wait_for(body(b), 60)
        finally:
            await b.shutdown(0)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry.from_home(make_tiny_home(tmp_path_factory.mktemp("tiny")), build_missing=False)


def test_batched_answers_equal_single(tiny_registry: Registry) -> None:
    engine = tiny_registry.get(None)
    qs = questions(12)
    single = [engine.answer([q], 3)[0] for q in qs]
    metrics = Metrics()

    async def body(b: Batcher) -> list[Any]:
        return await asyncio.gather(*(b.answer(engine, q, 3, 30) for q in qs))

    batched = run(BatchLimits(max_batch_size=8, max_queue_delay_s=0.05), body, metrics)
    for s, m in zip(single, batched):
        assert (m.best.answer, m.best.block.block.id, m.best.start_char) == \
               (s.best.answer, s.best.block.block.id, s.best.start_char)
        assert m.best.score == pytest.approx(s.best.score, abs=1e-4)
        assert [c.block.block.id for c in m.candidates] == [c.block.block.id for c in s.candidates]
    value = metrics.registry.get_sample_value
    assert value("realmqa_batch_size_sum", {"kind": "answer"}) == len(qs)
    assert 2 <= value("realmqa_batch_size_count", {"kind": "answer"}) < len(qs)  # type: ignore[operator]


def test_batched_retrieval_equals_single(tiny_registry: Registry) -> None:
    engine = tiny_registry.get(None)
    qs = questions(10, seed=7)
    single = [[(x.block.id, x.rank) for x in engine.retrieve([q], 5)[0].blocks] for q in qs]

    async def body(b: Batcher) -> list[Any]:
        return await asyncio.gather(*(b.retrieve(engine, q, 5, 30) for q in qs))

    batched = run(BatchLimits(max_batch_size=4, max_queue_delay_s=0.05), body)
    assert [[(x.block.id, x.rank) for x in r.blocks] for r in batched] == single


def test_batches_group_by_engine_and_parameter() -> None:
    e1, e2 = FakeEngine("a/1"), FakeEngine("b/1")

    async def body(b: Batcher) -> None:
        await asyncio.gather(b.answer(e1, "x", 2, 5), b.answer(e1, "y", 2, 5), b.answer(e1, "z", 3, 5),
                             b.answer(e2, "w", 2, 5), b.retrieve(e1, "v", 2, 5))

    run(BatchLimits(max_batch_size=8, max_queue_delay_s=0.05), body)
    assert sorted(e1.calls) == [("answer", ["x", "y"], 2), ("answer", ["z"], 3), ("retrieve", ["v"], 2)]
    assert e2.calls == [("answer", ["w"], 2)]


def test_token_budget_splits_batches() -> None:
    e = FakeEngine()  # reader_seq_len 64: beam 2 → 128 tokens per question

    async def body(b: Batcher) -> None:
        await asyncio.gather(*(b.answer(e, f"q{i}", 2, 5) for i in range(5)))

    run(BatchLimits(max_batch_size=8, max_batch_tokens=256, max_queue_delay_s=0.05), body)
    assert [len(c[1]) for c in e.calls] == [2, 2, 1]


def test_full_queue_is_overloaded_at_once() -> None:
    e = BlockingEngine()

    async def body(b: Batcher) -> None:
        running = asyncio.ensure_future(b.answer(e, "first", 1, 30))
        await asyncio.to_thread(e.entered.wait, 5)  # the worker holds "first"
        queued = [asyncio.ensure_future(b.answer(e, f"q{i}", 1, 30)) for i in range(2)]
        await asyncio.sleep(0)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(Overloaded) as exc:
            await b.answer(e, "one too many", 1, 30)
        assert asyncio.get_running_loop().time() - t0 < 0.5  # no hang
        assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "3"
        e.gate.set()
        assert len(await asyncio.gather(running, *queued)) == 3

    run(BatchLimits(max_batch_size=1, max_queue_size=2, retry_after_s=3, max_queue_delay_s=0), body)


def test_deadline_passed_drops_queued_work() -> None:
    e = BlockingEngine()

    async def body(b: Batcher) -> None:
        running = asyncio.ensure_future(b.answer(e, "first", 1, 30))
        await asyncio.to_thread(e.entered.wait, 5)
        with pytest.raises(DeadlinePassed) as exc:
            await b.answer(e, "too late", 1, 0.05)
        assert exc.value.status == 504
        e.gate.set()
        await running
        await b.answer(e, "after", 1, 5)

    run(BatchLimits(max_batch_size=1, max_queue_delay_s=0), body)
    assert [c[1] for c in e.calls] == [["first"], ["after"]]  # "too late" never ran


def test_faulty_job_fails_alone() -> None:
    e = BlockingEngine()
    e.gate.set()

    async def body(b: Batcher) -> list[Any]:
        return await asyncio.gather(b.answer(e, "good one", 1, 5), b.answer(e, "bad one", 1, 5),
                                    b.answer(e, "good two", 1, 5), return_exceptions=True)

    out = run(BatchLimits(max_batch_size=8, max_queue_delay_s=0.05), body)
    assert isinstance(out[1], InvalidInput)
    assert not isinstance(out[0], Exception) and not isinstance(out[2], Exception)


def test_shutdown_drains_queued_work_then_refuses_new() -> None:
    e = BlockingEngine()

    async def body(b: Batcher) -> None:
        jobs = [asyncio.ensure_future(b.answer(e, f"q{i}", 1, 30)) for i in range(4)]
        await asyncio.to_thread(e.entered.wait, 5)
        stopping = asyncio.ensure_future(b.shutdown(10))
        await asyncio.sleep(0.05)
        jobs.append(asyncio.ensure_future(b.answer(e, "accepted before the listener closed", 1, 30)))
        await asyncio.sleep(0.05)
        e.gate.set()
        await stopping
        assert [a.best.answer for a in await asyncio.gather(*jobs)] == ["Denver"] * 5
        with pytest.raises(NotReady):
            await b.answer(e, "new", 1, 30)

    run(BatchLimits(max_batch_size=1, max_queue_delay_s=0), body)


def test_shutdown_bound_answers_the_rest_503() -> None:
    e = BlockingEngine()

    async def body(b: Batcher) -> list[Any]:
        jobs = [asyncio.ensure_future(b.answer(e, f"q{i}", 1, 30)) for i in range(3)]
        await asyncio.to_thread(e.entered.wait, 5)
        await b.shutdown(0.1)
        e.gate.set()
        return await asyncio.gather(*jobs, return_exceptions=True)

    out = run(BatchLimits(max_batch_size=1, max_queue_delay_s=0), body)
    assert all(isinstance(x, NotReady) and x.status == 503 for x in out)


def test_tiny_home_registry_has_its_model(tmp_path: Path) -> None:
    r = Registry.from_home(make_tiny_home(tmp_path, blocks=20), build_missing=False)
    assert [e.model_ref for e in r.served()] == ["tiny/1"] and r.get(None).block_count == 20
