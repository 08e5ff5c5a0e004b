"""Backpressure over HTTP: 429 with Retry-After on a full queue (no hang), 504 past the deadline, 413 for a
chunked body without content-length."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.readiness import CHECK_QUESTION
from service.registry import Registry
from service.settings import Settings
from tests.service.blocking_engine import BlockingEngine
from tests.service.test_routes import assert_error, wait_for


@pytest.fixture()
def engine() -> BlockingEngine:
    return BlockingEngine()


@pytest.fixture()
def client(engine: BlockingEngine, tmp_path: Path) -> Iterator[TestClient]:
    (tmp_path / "models").mkdir()
    settings = Settings(home=tmp_path, max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0, retry_after_s=2,
                        request_timeout_ms=10000, max_body_bytes=1000, shutdown_timeout_s=0)
    with TestClient(create_app(settings, Registry({"fake": engine}))) as c:
        wait_for(c, "/readyz", 200)  # the first background check has run: the queue is the test's
        yield c
    engine.gate.set()


def test_full_queue_is_429_with_retry_after(client: TestClient, engine: BlockingEngine) -> None:
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(client.post, "/answer", json={"question": "first"})
        assert engine.entered.wait(5)
        queued = [pool.submit(client.post, "/answer", json={"question": f"q{i}"}) for i in range(2)]
        deadline = time.monotonic() + 5
        while client.get("/metrics").text.find("realmqa_queue_depth 2.0") < 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.get("/healthz").status_code == 200  # the event loop is free while the engine works
        t0 = time.monotonic()
        r = client.post("/retrieve", json={"query": "one too many"})
        assert time.monotonic() - t0 < 1.0
        assert_error(r, 429, None)
        assert r.headers["Retry-After"] == "2"
        engine.gate.set()
        assert [f.result(10).status_code for f in (first, *queued)] == [200, 200, 200]


def test_deadline_is_504(client: TestClient, engine: BlockingEngine) -> None:
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/answer", json={"question": "first"})
        assert engine.entered.wait(5)
        assert_error(client.post("/answer", json={"question": "late", "timeout_ms": 50}), 504, "timeout_ms")
        engine.gate.set()
        assert first.result(10).status_code == 200
    assert [c[1] for c in engine.calls if c[1] != [CHECK_QUESTION]] == [["first"]]


def test_chunked_body_over_the_limit_is_413(client: TestClient, engine: BlockingEngine) -> None:
    engine.gate.set()

    def chunks() -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    r = client.post("/answer", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, None)

    def small() -> Iterator[bytes]:
        yield b'{"question": '
        yield b'"Denver?"}'

    assert client.post("/answer", content=small(), headers={"content-type": "application/json"}).status_code == 200
