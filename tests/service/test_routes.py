"""Every route of service.app with a fake engine: shapes, defaults and the 4xx cases."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from service.app import create_app
from service.registry import Registry
from service.settings import Settings
from tests.service.fake_engine import FakeEngine


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def client(engine: FakeEngine, tmp_path: Path) -> TestClient:
    (tmp_path / "models").mkdir()
    settings = Settings(home=tmp_path, max_question_chars=200, max_body_bytes=2000, max_k=5, default_k=3,
                        max_reader_beam_size=5)
    with TestClient(create_app(settings, Registry({"fake": engine}))) as c:
        wait_for(c, "/readyz", 200)  # the first background check has run: engine.calls holds only the test's
        yield c  # type: ignore[misc]


def assert_error(r, status: int, param: str | None) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"type", "message", "param"} and err["message"]
    assert err["param"] == param


def test_answer_shape(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/answer", json={"question": "Who won Super Bowl 50 Denver?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == "Denver"
    assert body["block"]["id"] == "b0"
    assert body["block"]["text"][body["start_char"]:body["end_char"]] == body["answer"]
    assert body["model"] == "fake/1" and body["index"] == "fake-index/1"
    assert [c["block_id"] for c in body["candidates"]][:1] == ["b0"]
    assert engine.calls[-1] == ("answer", ["Who won Super Bowl 50 Denver?"], 5)


def test_answer_reader_beam_and_model(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/answer", json={"question": "Carolina?", "reader_beam_size": 2, "model": "fake/1"})
    assert r.status_code == 200
    assert engine.calls[-1][2] == 2 and len(r.json()["candidates"]) == 2


def test_retrieve_best_first(client: TestClient) -> None:
    r = client.post("/retrieve", json={"query": "carolina panthers lost", "k": 2})
    assert r.status_code == 200, r.text
    blocks = r.json()["blocks"]
    assert [b["id"] for b in blocks] == ["b1", "b0"]
    assert [b["rank"] for b in blocks] == [1, 2]
    assert blocks[0]["score"] >= blocks[1]["score"]


@pytest.mark.parametrize("body, param", [
    ({}, "question"),
    ({"question": ""}, "question"),
    ({"question": "   "}, "question"),
    ({"question": 5}, "question"),
    ({"question": "ok", "reader_beam_size": 0}, "reader_beam_size"),
    ({"question": "ok", "reader_beam_size": 6}, "reader_beam_size"),
    ({"question": "ok", "reader_beam_size": "x"}, "reader_beam_size"),
    ({"question": "ok", "extra": 1}, "extra"),
])
def test_answer_422(client: TestClient, body: dict, param: str) -> None:  # type: ignore[type-arg]
    assert_error(client.post("/answer", json=body), 422, param)


@pytest.mark.parametrize("body, param", [
    ({}, "query"),
    ({"query": ""}, "query"),
    ({"query": "x", "k": 0}, "k"),
    ({"query": "x", "k": -3}, "k"),
    ({"query": "x", "k": 6}, "k"),
    ({"query": "x", "k": 1.5}, "k"),
])
def test_retrieve_422(client: TestClient, body: dict, param: str) -> None:  # type: ignore[type-arg]
    assert_error(client.post("/retrieve", json=body), 422, param)


def test_not_json_is_400(client: TestClient) -> None:
    r = client.post("/answer", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 400, None)
    assert r.json()["error"]["type"] == "bad_request"


def test_text_too_long_is_413(client: TestClient) -> None:
    assert_error(client.post("/answer", json={"question": "x" * 201}), 413, "question")
    assert_error(client.post("/retrieve", json={"query": "x" * 201}), 413, "query")


def test_body_too_large_is_413(client: TestClient) -> None:
    assert_error(client.post("/answer", json={"question": "x", "pad": "y" * 3000}), 413, None)


def test_unknown_model_is_404(client: TestClient) -> None:
    assert_error(client.post("/answer", json={"question": "x", "model": "nope"}), 404, "model")
    assert_error(client.post("/retrieve", json={"query": "x", "model": "fake/2"}), 404, "model")


def wait_for(client: TestClient, path: str, status: int, timeout_s: float = 10) -> Response:
    deadline = time.monotonic() + timeout_s
    while (r := client.get(path)).status_code != status:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.01)
    return r


def test_health_and_readiness(tmp_path: Path) -> None:
    """/readyz reports the background check's result: a failing engine turns it 503 at the next check."""
    (tmp_path / "models").mkdir()
    engine = FakeEngine()
    with TestClient(create_app(Settings(home=tmp_path, readiness_interval_s=0.05), Registry({"fake": engine}))) as c:
        assert c.get("/healthz").json() == {"status": "alive"}
        r = wait_for(c, "/readyz", 200)
        assert r.json()["models"] == ["fake/1"] and r.json()["checks"]["fake/1"]["ok"] is True
        engine.ready = False
        r = wait_for(c, "/readyz", 503)
        assert_error(r, 503, None)
        assert "fake/1: last check failed" in r.json()["error"]["message"]
        assert c.get("/healthz").status_code == 200
        engine.ready = True
        wait_for(c, "/readyz", 200)


def test_empty_registry_is_not_ready(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with TestClient(create_app(Settings(home=tmp_path), Registry({}))) as c:
        assert_error(c.get("/readyz"), 503, None)
        assert_error(c.post("/answer", json={"question": "x"}), 404, "model")


def test_settings_name_the_bad_setting(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="home"):
        Settings(home=tmp_path / "nowhere")
    with pytest.raises(ValidationError, match="port"):
        Settings(home=Path(__file__).parents[2] / "service" / "default", port=70000)
