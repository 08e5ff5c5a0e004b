"""service.client against real servers on loopback: a tiny random realmqa model (answers equal the routes' JSON,
async equals sync, errors raised with their fields) and a blocking fake engine (429 retried, then raised)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.client import APIError, AsyncClient, Client
from service.registry import Registry
from service.schemas import AnswerResponse, IndexesResponse, ModelsResponse, RetrieveResponse
from service.settings import Settings
from tests.service.blocking_engine import BlockingEngine
from tests.service.serve_process import free_port
from tests.service.serve_thread import serve_in_thread
from tests.service.tiny_home import make_tiny_home, questions

QUESTIONS = questions(6, seed=13)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny random model's home served by the real app (registry loaded at start, as ``realmqa serve``)."""
    home = make_tiny_home(tmp_path_factory.mktemp("tiny"), blocks=120)
    with serve_in_thread(create_app(Settings(home=home, build_missing_index=False, max_question_chars=300))) as url:
        yield url


def _no_timings(d: dict[str, Any]) -> dict[str, Any]:
    """An /answer body without ``timings_ms`` (the only field that differs between two runs of one question)."""
    return {k: v for k, v in d.items() if k != "timings_ms"}


def _assert_close(a: Any, b: Any, path: str = "") -> None:
    """``a == b``, floats within 1e-5: a batch of concurrent questions differs from one at a time by float32
    rounding of the scores (``tests/service/test_batching.py``)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-5), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_import_needs_no_torch_faiss_numpy_or_fastapi() -> None:
    code = ("import sys; from service.client import Client, AsyncClient, APIError; "
            "print(sorted(m for m in ('torch', 'faiss', 'numpy', 'fastapi', 'starlette', 'uvicorn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_results_are_the_servers_models_and_equal_the_routes_json(url: str) -> None:
    with Client(url) as qa:
        for q in QUESTIONS:
            a = qa.answer(q, reader_beam_size=3)
            assert type(a) is AnswerResponse
            raw = httpx.post(url + "/answer", json={"question": q, "reader_beam_size": 3}, timeout=60).json()
            assert _no_timings(a.model_dump(mode="json")) == _no_timings(raw)
            assert set(a.timings_ms) == set(raw["timings_ms"])
            assert len(a.candidates) == 3 and a.candidates[0].block == a.block
            for c in a.candidates:  # each candidate carries the block it was read from
                assert c.block.id == c.block_id and c.block.text[c.start_char:c.end_char] == c.answer
            r = qa.retrieve(q, k=7)
            assert type(r) is RetrieveResponse and [b.rank for b in r.blocks] == list(range(1, 8))
            assert r.model_dump(mode="json") == httpx.post(url + "/retrieve", json={"query": q, "k": 7}).json()
        m = qa.models()
        assert type(m) is ModelsResponse and m.model_dump(mode="json") == httpx.get(url + "/v1/models").json()
        assert m.models[0].name == "tiny" and m.models[0].versions[0].state == "ready"
        i = qa.indexes()
        assert type(i) is IndexesResponse and i.model_dump(mode="json") == httpx.get(url + "/v1/indexes").json()
        assert qa.health() and qa.ready()


def test_async_client_equals_sync_client(url: str) -> None:
    with Client(url) as qa:
        sync = [_no_timings(qa.answer(q).model_dump()) for q in QUESTIONS]
        sync_r = [qa.retrieve(q, k=4).model_dump() for q in QUESTIONS]
        sync_m = qa.models().model_dump()

    async def run() -> tuple[list[Any], list[Any], Any, bool]:
        async with AsyncClient(url) as aqa:
            answers = await asyncio.gather(*(aqa.answer(q) for q in QUESTIONS))  # concurrent: batched server-side
            blocks = await asyncio.gather(*(aqa.retrieve(q, k=4) for q in QUESTIONS))
            return answers, blocks, await aqa.models(), await aqa.ready()

    answers, blocks, models, ready = asyncio.run(run())
    assert all(type(a) is AnswerResponse for a in answers)
    _assert_close([_no_timings(a.model_dump()) for a in answers], sync)
    _assert_close([b.model_dump() for b in blocks], sync_r)
    assert models.model_dump() == sync_m and ready


@pytest.mark.parametrize(("kwargs", "status", "type_", "param"), [
    ({"question": "   "}, 422, "invalid_request", "question"),
    ({"question": "alpha " * 100}, 413, "payload_too_large", "question"),
    ({"question": "who won", "reader_beam_size": 0}, 422, "invalid_request", "reader_beam_size"),
    ({"question": "who won", "model": "nope"}, 404, "not_found", None),
])
def test_errors_raise_apierror_with_their_fields(url: str, kwargs: dict[str, Any], status: int, type_: str,
                                                 param: str | None) -> None:
    raw = httpx.post(url + "/answer", json=kwargs)
    body = raw.json()["error"]
    with Client(url) as qa, pytest.raises(APIError) as e:
        qa.answer(**kwargs)
    assert (e.value.status, e.value.type, e.value.message) == (status, type_, body["message"])
    assert e.value.param == body["param"] and (param is None or e.value.param == param)
    assert e.value.request_id and e.value.request_id != raw.headers["x-request-id"]  # one per request
    with Client(url, headers={"X-Request-ID": "mine-1"}) as qa, pytest.raises(APIError) as e:
        qa.answer(**kwargs)
    assert e.value.request_id == "mine-1"

    async def run() -> APIError:
        async with AsyncClient(url) as aqa:
            with pytest.raises(APIError) as ae:
                await aqa.answer(**kwargs)
            return ae.value

    ae = asyncio.run(run())
    assert (ae.status, ae.type, ae.message, ae.param) == (status, type_, body["message"], body["param"])


def test_retrieve_error_names_k(url: str) -> None:
    with Client(url) as qa, pytest.raises(APIError) as e:
        qa.retrieve("who won", k=10_000)
    assert (e.value.status, e.value.param) == (422, "k")


def test_nothing_listening_raises_httpx_connect_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", connect_timeout_s=2, max_retries=3) as qa:
        with pytest.raises(httpx.ConnectError):
            qa.health()


# --- 429: a blocking engine holds the worker, one request fills the queue (size 1), the next is refused ---

@contextmanager
def held(url: str, app: FastAPI, engine: BlockingEngine, queued: int = 1) -> Iterator[None]:
    """One request held in ``engine`` and ``queued`` more waiting in the queue, until the gate opens (on exit)."""
    threads = [threading.Thread(target=httpx.post, args=(url + "/answer",), kwargs={
        "json": {"question": f"held {i}"}, "timeout": 60}) for i in range(1 + queued)]
    threads[0].start()
    assert engine.entered.wait(10)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 10
    while app.state.batcher.depth() < queued:
        assert time.monotonic() < deadline, "the requests never queued"
        time.sleep(0.01)
    try:
        yield
    finally:
        engine.gate.set()
        for t in threads:
            t.join(30)


@pytest.fixture()
def blocked(tmp_path: Path) -> Iterator[tuple[str, FastAPI, BlockingEngine]]:
    (tmp_path / "models").mkdir()
    engine = BlockingEngine()
    app = create_app(Settings(home=tmp_path, max_batch_size=1, max_queue_size=1, max_queue_delay_ms=0,
                              retry_after_s=1, shutdown_timeout_s=0), Registry({"fake": engine}))
    with serve_in_thread(app) as url, held(url, app, engine):
        yield url, app, engine


def _refused(app: FastAPI, route: str = "/answer") -> float:
    return app.state.metrics.registry.get_sample_value(
        "realmqa_requests_total", {"route": route, "method": "POST", "status": "429"}) or 0.0


def _refused_settles(app: FastAPI, route: str = "/answer", timeout_s: float = 5.0) -> float:
    """The 429 count once it stops changing: the server's middleware counts a response after sending it, so the
    client can hold its last 429 a moment before the count does."""
    deadline = time.monotonic() + timeout_s
    last = _refused(app, route)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _refused(app, route)
        if now == last:
            return now
        last = now
    return last


def test_429_is_retried_after_retry_after_then_answered(blocked: tuple[str, FastAPI, BlockingEngine]) -> None:
    url, app, engine = blocked
    result: list[AnswerResponse] = []
    t0 = time.monotonic()
    asker = threading.Thread(target=lambda: result.append(Client(url, max_retries=3).answer("Denver won")))
    asker.start()
    deadline = time.monotonic() + 10
    while _refused(app) < 1:  # the client's first try was refused ...
        assert time.monotonic() < deadline
        time.sleep(0.01)
    engine.gate.set()  # ... the queue drains; the retry after Retry-After: 1 is answered
    asker.join(30)
    assert result and result[0].answer == "Denver" and result[0].block.id == "b0"
    assert time.monotonic() - t0 >= 1.0
    assert _refused_settles(app) == 1


def test_429_past_the_retry_bound_is_raised(blocked: tuple[str, FastAPI, BlockingEngine]) -> None:
    url, app, _ = blocked
    t0 = time.monotonic()
    with Client(url, max_retries=2, max_retry_wait_s=0.2) as qa, pytest.raises(APIError) as e:
        qa.answer("Denver won")
    waited = time.monotonic() - t0
    assert (e.value.status, e.value.type) == (429, "overloaded")
    assert _refused_settles(app) == 3  # the first try and two retries
    assert 0.35 <= waited < 1.0  # two waits, each cut from Retry-After's 1 s to max_retry_wait_s

    async def run() -> APIError:
        async with AsyncClient(url, max_retries=1, max_retry_wait_s=0.1) as aqa:
            with pytest.raises(APIError) as ae:
                await aqa.retrieve("Denver")
            return ae.value

    assert asyncio.run(run()).status == 429
    assert _refused_settles(app, "/retrieve") == 2


def test_cli_ask_prints_answer_title_and_sentence(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main, sentence_around

    q = QUESTIONS[0]
    a = Client(url).answer(q, reader_beam_size=2)
    main(["ask", "--url", url, "--k", "2", q])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == a.answer
    assert f"block {a.block.id}" in lines[1] and a.block.title in lines[1]
    assert lines[2].strip() == sentence_around(a.block.text, a.start_char, a.end_char)
    assert f"[{a.answer}]" in lines[2]
    main(["ask", "--url", url, "--k", "2", "--json", q])
    assert _no_timings(json.loads(capsys.readouterr().out)) == _no_timings(a.model_dump(mode="json"))
    with pytest.raises(SystemExit, match="422 invalid_request.*param question"):
        main(["ask", "--url", url, " "])


def test_sentence_around() -> None:
    from service.cli import sentence_around

    t = ("Super Bowl 50 was an American football game. The AFC champion Denver Broncos defeated the NFC "
         "champion Carolina Panthers 24–10. It was played on February 7, 2016.")
    i = t.index("Denver Broncos")
    assert sentence_around(t, i, i + 14) == ("The AFC champion [Denver Broncos] defeated the NFC champion "
                                             "Carolina Panthers 24–10.")
    assert sentence_around(t, 0, 5) == "[Super] Bowl 50 was an American football game."
    assert sentence_around(t, len(t) - 5, len(t) - 1) == "It was played on February 7, [2016]."
