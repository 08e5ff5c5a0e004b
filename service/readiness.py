"""Readiness that costs little and tells the truth.

``GET /readyz`` answers from state in microseconds: a model is served, the batcher is alive and not shutting
down, and the last real check of every served model passed. The real check — one question answered
through the batcher, as any request — runs in the background every ``readiness_interval_s`` and at once
when the served models change (a load, unload or swap), so probes never cost an engine call and many
probes cannot starve ``/answer``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from service.batching import Batcher
from service.engine import Engine
from service.errors import ServiceError
from service.registry import Registry

log = logging.getLogger(__name__)

CHECK_QUESTION = "what is this?"


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    at: float  # time.monotonic() when the check ended
    error: str | None = None  # public text: the error type and message of a failed check (paths scrubbed)


def _key(engine: Engine) -> tuple[str, int]:
    return engine.model_ref, id(engine)  # a version unloaded and loaded again is a new engine: checked again


class Readiness:
    """The background check and the state ``/readyz`` reads.

    Args:
        interval_s: seconds between two real checks of every served model.
        timeout_s: deadline of one check's question (a check past it fails).
    """

    def __init__(self, interval_s: float, timeout_s: float) -> None:
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.results: dict[tuple[str, int], CheckResult] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, registry: Registry, batcher: Batcher) -> None:
        """Run the first check now (the batcher started), then the background checks; re-check on registry
        events. Call inside the running event loop, in the app's lifespan."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        registry.observers.append(lambda event, ref, result: self.wake())
        await self._check_all(registry, batcher)
        self._task = self._loop.create_task(self._run(registry, batcher), name="realmqa-readiness")

    async def stop(self) -> None:
        """End the background checks. A flag as well as a cancel: Python 3.11's ``asyncio.wait_for`` can swallow
        a cancellation that arrives as its awaitable completes, and the loop must end anyway."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def wake(self) -> None:
        """Check now (callable from any thread: registry events come from worker threads)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def check(self, engine: Engine, batcher: Batcher) -> CheckResult:
        """One question through the batcher, as a request would go."""
        try:
            await batcher.answer(engine, CHECK_QUESTION, 1, self.timeout_s)
            return CheckResult(True, time.monotonic())
        except ServiceError as e:
            return CheckResult(False, time.monotonic(), f"{e.type}: {e.message}")
        except Exception as e:  # noqa: BLE001 — any failure of the real check means not ready
            log.exception("readiness check of %s failed", engine.model_ref)
            return CheckResult(False, time.monotonic(), f"engine error ({type(e).__name__})")

    async def _check_all(self, registry: Registry, batcher: Batcher) -> None:
        results = {}
        for engine in registry.served():
            results[_key(engine)] = r = await self.check(engine, batcher)
            if not r.ok:
                log.warning("readiness check of %s failed: %s", engine.model_ref, r.error)
        self.results = results

    async def _run(self, registry: Registry, batcher: Batcher) -> None:
        assert self._wake is not None
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if not self._stopping:
                await self._check_all(registry, batcher)

    def state(self, registry: Registry, batcher: Batcher) -> tuple[bool, str, dict[str, object]]:
        """(ready, why not, per-model detail) from state alone: no engine call."""
        engines = registry.served()
        now = time.monotonic()
        detail: dict[str, object] = {}
        problems = []
        if batcher.failure is not None:
            problems.append(batcher.failure)
        elif not batcher.accepting:
            problems.append("shutting down")
        if not engines:
            problems.append("no model is loaded")
        for engine in engines:
            r = self.results.get(_key(engine))
            if r is None:
                problems.append(f"{engine.model_ref}: first check pending")
                detail[engine.model_ref] = {"ok": None}
                continue
            age = now - r.at
            detail[engine.model_ref] = {"ok": r.ok, "checked_s_ago": round(age, 3), "error": r.error}
            if not r.ok:
                problems.append(f"{engine.model_ref}: last check failed ({r.error})")
            elif age > 2 * self.interval_s + self.timeout_s + 1:  # the checks stopped: say so, never trust old news
                problems.append(f"{engine.model_ref}: last check is {age:.0f} s old")
        return not problems, "; ".join(problems), detail
