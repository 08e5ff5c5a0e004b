"""Dynamic batching and backpressure: the one owner of the request queue, the batching task and the
per-request futures.

A handler calls :meth:`Batcher.answer` or :meth:`Batcher.retrieve`; the job goes into a bounded queue
(full: :class:`Overloaded` at once, 429 with ``Retry-After``, never a wait) and the handler awaits its
future until the request's deadline (passed: :class:`DeadlinePassed`, 504; a job not yet started is
then dropped). One asyncio task gathers queued jobs that can share a call — same engine, same kind,
same ``k`` or ``reader_beam_size`` — for up to ``max_queue_delay_ms`` after the oldest arrived, up to
``max_batch_size`` jobs and, for ``/answer``, ``max_batch_tokens`` reader tokens (``reader_beam_size ×
reader_seq_len`` per question; TEI's token budget), and runs the batch through the engine's batched
``answer``/``retrieve`` in ONE worker thread, so the event loop stays free and torch gets one batch at a
time (Triton's dynamic batcher, Ray Serve's ``@serve.batch``). Engines answer each question of a batch as
if alone, so batched results equal one-at-a-time results. Requests are validated before they are queued
(the routes call the engine's ``validate_question``/``validate_query``, whose results — the text's wordpieces —
go back to the engine with the job, so it is not cut twice), so a bad one never joins a batch; a
batch that still raises is run again one job at a time so only the faulty request fails.

Only live jobs count: a job whose handler gave up (deadline passed, client gone) leaves the queue at once,
so expired requests never make honest ones get 429 and :meth:`Batcher.depth` reports live jobs. The
batching task is supervised: if it ever ends other than by :meth:`Batcher.shutdown`, every queued and
running job gets 503 at once, new jobs get 503, and :attr:`Batcher.failure` says why (``/healthz`` and
``/readyz`` then answer 503, so the orchestrator restarts the process).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.engine import Answer, Engine, Retrieval
from service.errors import DeadlinePassed, NotReady, Overloaded
from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    kind: str  # "answer" | "retrieve"
    engine: Engine
    text: str
    param: int  # reader_beam_size (answer) or k (retrieve)
    tokens: int  # reader tokens this job adds to an /answer batch
    enqueued: float  # time.monotonic()
    deadline: float  # time.monotonic()
    started: float | None = None  # time.monotonic() when its batch went to the engine (per-job timings start here)
    prepared: object = None  # what the engine's check returned for the text (given back to the engine)
    future: asyncio.Future[Any] = field(repr=False, default_factory=lambda: asyncio.get_running_loop().create_future())

    def key(self) -> tuple[int, str, int]:
        return id(self.engine), self.kind, self.param


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 65536
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 256
    retry_after_s: int = 1


class Batcher:
    """Owns the queue and the batching task; :meth:`start` in the app's lifespan, :meth:`shutdown` at its end."""

    def __init__(self, limits: BatchLimits, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self.metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running: list[_Job] = []
        self._closed = False  # shut down: new jobs get 503
        self._draining = False  # shutdown began: still taking work, but not ready
        self.failure: str | None = None  # why the batching task died (None while it lives)

    # --- handler side -------------------------------------------------------------------------------

    def depth(self) -> int:
        """Live jobs waiting for the engine (not counting the batch running)."""
        return len(self._jobs)

    @property
    def alive(self) -> bool:
        """The batching task runs (started, not dead); it may be draining."""
        return self._task is not None and self.failure is None and not self._closed

    @property
    def accepting(self) -> bool:
        """Alive and not shutting down: what readiness needs of the batcher."""
        return self.alive and not self._draining

    async def answer(self, engine: Engine, question: str, reader_beam_size: int, timeout_s: float,
                     prepared: object = None) -> Answer:
        """``prepared``: what ``engine.validate_question`` returned for the question."""
        tokens = reader_beam_size * engine.reader_seq_len
        return await self._submit(_Job("answer", engine, question, reader_beam_size, tokens,  # type: ignore[no-any-return]
                                       *self._times(timeout_s), prepared=prepared))

    async def retrieve(self, engine: Engine, query: str, k: int, timeout_s: float, prepared: object = None,
                       ) -> Retrieval:
        """``prepared``: what ``engine.validate_query`` returned for the query."""
        return await self._submit(_Job("retrieve", engine, query, k, 0,  # type: ignore[no-any-return]
                                        *self._times(timeout_s), prepared=prepared))

    @staticmethod
    def _times(timeout_s: float) -> tuple[float, float]:
        now = time.monotonic()
        return now, now + timeout_s

    async def _submit(self, job: _Job) -> Any:
        if self.failure is not None:
            self._reject("batcher_dead")
            raise NotReady("the batcher is not running; the server needs a restart")
        if self._closed or self._task is None:
            self._reject("shutdown")
            raise NotReady("the server has shut down" if self._closed else "the batcher is not running")
        if len(self._jobs) >= self.limits.max_queue_size:
            self._reject("overloaded")
            raise Overloaded(f"the queue holds {len(self._jobs)} requests, its limit; retry later", param=None,
                             headers={"Retry-After": str(self.limits.retry_after_s)})
        self._jobs.append(job)
        self._depth_changed()
        assert self._wake is not None
        self._wake.set()
        try:
            return await asyncio.wait_for(job.future, max(0.0, job.deadline - time.monotonic()))
        except asyncio.TimeoutError:  # wait_for cancelled the future
            self._reject("deadline")
            raise DeadlinePassed(f"no answer within {1e3 * (job.deadline - job.enqueued):.0f} ms",
                                 param="timeout_ms") from None
        finally:
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        """A job whose handler stopped waiting (answered, deadline passed, client gone) leaves the queue."""
        if job.started is None:
            try:
                self._jobs.remove(job)
            except ValueError:
                pass
            self._depth_changed()

    def _depth_changed(self) -> None:
        """The queue depth gauge follows :meth:`depth` (set here, not at scrape: with ``--workers`` a scrape
        reaches one worker and the gauge is summed over all of them)."""
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._jobs))

    def _reject(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason).inc()

    # --- batching task ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching task and the worker thread (call inside the running event loop)."""
        self._closed = self._draining = False
        self.failure = None
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="realmqa-engine")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="realmqa-batcher")
        self._task.add_done_callback(self._on_task_end)

    def _on_task_end(self, task: asyncio.Task[None]) -> None:
        """Supervision: the task ended other than by :meth:`shutdown` — fail every job 503 at once."""
        if self._closed:
            return
        err = None if task.cancelled() else task.exception()
        self.failure = f"the batching task {'was cancelled' if err is None else 'raised ' + type(err).__name__}"
        log.error("%s; answering every request 503", self.failure, exc_info=err)
        for job in (*self._jobs, *self._running):
            if not job.future.done():
                self._reject("batcher_dead")
                job.future.set_exception(NotReady("the batcher stopped; the server needs a restart"))
        self._jobs.clear()
        self._depth_changed()

    async def _loop(self) -> None:
        assert self._wake is not None
        while not self._closed:  # a flag as well as cancel: 3.11's wait_for can swallow a cancellation
            while not self._jobs and not self._closed:
                self._wake.clear()
                await self._wake.wait()
            if self._closed:
                return
            await self._gather_window()
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    async def _gather_window(self) -> None:
        """Wait until ``max_queue_delay`` after the oldest job arrived, or a full batch is queued."""
        assert self._wake is not None
        end = self._jobs[0].enqueued + self.limits.max_queue_delay_s
        while len(self._jobs) < self.limits.max_batch_size and (left := end - time.monotonic()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                break

    def _take_batch(self) -> list[_Job]:
        """The oldest live job and the queued jobs that can share its call, within the limits; drops the
        jobs whose handler gave up (deadline passed)."""
        now = time.monotonic()
        batch: list[_Job] = []
        rest: deque[_Job] = deque()
        tokens = 0
        for job in self._jobs:
            if job.future.done():  # its handler gave up (it normally removes the job itself)
                continue
            if job.deadline <= now:
                job.future.set_exception(DeadlinePassed("deadline passed while queued", param="timeout_ms"))
                continue
            fits = (not batch or (job.key() == batch[0].key() and len(batch) < self.limits.max_batch_size
                                  and tokens + job.tokens <= self.limits.max_batch_tokens))
            if fits:
                batch.append(job)
                tokens += job.tokens
            else:
                rest.append(job)
        self._jobs = rest
        self._depth_changed()
        return batch

    async def _run(self, batch: list[_Job]) -> None:
        started = time.monotonic()
        m = self.metrics
        for job in batch:
            job.started = started
        if m is not None:
            m.batch_size.labels(batch[0].kind).observe(len(batch))
            for job in batch:
                m.queue_wait.observe(started - job.enqueued)
        self._running = batch  # kept if the task dies here, so that supervision answers these jobs 503
        assert self._executor is not None
        results = await asyncio.get_running_loop().run_in_executor(self._executor, _call_batch, batch)
        self._running = []
        if m is not None:  # each engine call's reader passes once (a batch re-run one job at a time has several)
            for stats in {id(s): s for r in results if (s := getattr(r, "read_stats", None)) is not None}.values():
                m.observe_read(batch[0].engine.model_ref, stats)
        for job, res in zip(batch, results):
            if job.future.done():
                continue
            if isinstance(res, BaseException):
                job.future.set_exception(res)
            else:
                if m is not None:
                    m.observe_stages(job.engine.model_ref, res.timings_ms)
                job.future.set_result(res)

    # --- shutdown -----------------------------------------------------------------------------------

    async def shutdown(self, bound_s: float) -> None:
        """Let queued and running jobs finish for up to ``bound_s``, then answer the rest with 503, refuse new
        jobs (503) and stop the task and the worker thread.

        Jobs submitted during the drain are still taken: they come from requests the server accepted before
        it stopped accepting connections (uvicorn closes the listener and ends keep-alive on SIGTERM), so
        their number is bounded."""
        self._draining = True
        end = time.monotonic() + bound_s
        while (self._jobs or self._running) and self.failure is None and time.monotonic() < end:
            await asyncio.sleep(0.01)
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        left = [j for j in (*self._jobs, *self._running) if not j.future.done()]
        for job in left:
            self._reject("shutdown")
            job.future.set_exception(NotReady("the server shut down before this request ran"))
        if left:
            log.warning("shutdown: %d queued requests answered 503 after %.1f s", len(left), bound_s)
        self._jobs.clear()
        self._depth_changed()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 — a death was logged by _on_task_end
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


_CALLS: dict[str, Callable[[Engine, list[str], int, list[object]], list[Any]]] = {
    "answer": lambda e, texts, p, prepared: list(e.answer(texts, p, prepared)),
    "retrieve": lambda e, texts, p, prepared: list(e.retrieve(texts, p, prepared)),
}


def _call_batch(batch: list[_Job]) -> list[Any]:
    """In the worker thread: one engine call for the batch; if it raises, one call per job so only the
    faulty job fails (e.g. a question with no wordpieces). Returns a result or an exception per job."""
    first = batch[0]
    call = _CALLS[first.kind]
    try:
        return call(first.engine, [j.text for j in batch], first.param, [j.prepared for j in batch])
    except Exception as e:  # noqa: BLE001 — re-run alone below, each job gets its own outcome
        if len(batch) == 1:
            return [e]
    out: list[Any] = []
    for job in batch:
        try:
            out.extend(call(job.engine, [job.text], job.param, [job.prepared]))
        except Exception as e:  # noqa: BLE001 — delivered to the job's future, raised in its handler
            out.append(e)
    return out
