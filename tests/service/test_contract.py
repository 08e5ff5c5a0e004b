"""The HTTP contract under hostile input (issue 12): one error shape for every error, framework ones included;
ASCII-digit versions; no-wordpiece texts refused on both routes (the tiny random model's real tokenizer);
``X-Request-ID`` on every response; JSON log lines; the OpenAPI document declares what the routes answer."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.probes import ProbeMiddleware
from service.request_log import configure_logging
from service.settings import Settings
from tests.service.test_routes import assert_error, wait_for
from tests.service.tiny_home import make_tiny_home

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_home(tmp_path_factory.mktemp("contract"), blocks=30)


@pytest.fixture(scope="module")
def client(tiny_home: Path) -> Iterator[TestClient]:
    settings = Settings(home=tiny_home, admin_token=TOKEN, build_missing_index=False, max_question_chars=300,
                        max_reader_beam_size=7, max_k=9, default_k=5)
    app = create_app(settings)

    @app.get("/boom", include_in_schema=False)
    async def boom() -> None:
        raise RuntimeError(f"cannot open {tiny_home}/secret.bin")

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# The hand-made cases: each a 4xx in the error shape.
HOSTILE = [
    ("post", "/answer", {"json": {"question": "who?", "model": "x/²"}}, 422, "model"),
    ("post", "/answer", {"json": {"question": "who?", "model": "tiny/²"}}, 422, "model"),
    ("post", "/retrieve", {"json": {"query": "\u0000"}}, 422, "query"),
    ("post", "/answer", {"json": {"question": "\u0000"}}, 422, "question"),
    ("post", "/answer", {"json": {"question": "\u200b"}}, 422, "question"),
    ("post", "/retrieve", {"json": {"query": "\u200b\u200b"}}, 422, "query"),
    ("get", "/nope", {}, 404, None),
    ("put", "/answer", {}, 405, None),
    ("post", "/answer", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, None),
    ("post", "/answer", {"content": b"[" * 5000, "headers": {"content-type": "application/json"}}, 400, None),
    ("post", "/answer", {"content": b'"question"', "headers": {"content-type": "application/json"}}, 422, None),
    ("post", "/answer", {"content": b"question=x", "headers": {"content-type": "text/plain"}}, 422, None),
    ("post", "/answer", {"json": {"question": " ".join(["alpha"] * 40)}}, 422, "question"),  # > 24 tokens
    ("post", "/v1/models/tiny/versions/%C2%B2/load", {"headers": {"Authorization": f"Bearer {TOKEN}"}}, 422,
     "version"),
    ("post", "/v1/models/.hidden/versions/1/load", {"headers": {"Authorization": f"Bearer {TOKEN}"}}, 422, "name"),
]


@pytest.mark.parametrize("method, path, kw, status, param", HOSTILE, ids=[f"{h[1]}:{h[3]}" for h in HOSTILE])
def test_hostile_requests_get_4xx_in_the_shape(client: TestClient, method: str, path: str, kw: dict[str, Any],
                                               status: int, param: str | None) -> None:
    r = getattr(client, method)(path, **kw)
    assert_error(r, status, param)
    assert r.headers["X-Request-ID"]


def test_405_names_the_allowed_methods(client: TestClient) -> None:
    r = client.put("/answer")
    assert r.headers["Allow"] == "POST" and r.json()["error"]["type"] == "method_not_allowed"


def test_good_requests_still_answer(client: TestClient) -> None:
    assert client.post("/answer", json={"question": "who won the war?", "model": "tiny/1"}).status_code == 200
    assert client.post("/retrieve", json={"query": "red river", "k": 9}).status_code == 200


def test_last_resort_500_carries_no_path_or_traceback(client: TestClient, tiny_home: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        r = client.get("/boom", headers={"X-Request-ID": "trace-me-42"})
    assert_error(r, 500, None)
    assert r.json()["error"]["type"] == "internal_error"
    assert str(tiny_home) not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
    assert r.headers["X-Request-ID"] == "trace-me-42" and "trace-me-42" in r.json()["error"]["message"]
    assert any(rec.exc_info and "secret.bin" in str(rec.exc_info[1]) for rec in caplog.records)  # logged in full


def test_request_id_is_the_clients_or_a_new_one(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3
    bad = client.get("/healthz", headers={"X-Request-ID": "x" * 500}).headers["X-Request-ID"]
    assert bad != "x" * 500 and len(bad) <= 128
    r = client.post("/answer", content=b"x" * 70000, headers={"X-Request-ID": "big-body"})
    assert_error(r, 413, None)
    assert r.headers["X-Request-ID"] == "big-body"


def test_logs_are_json_lines_with_request_id_route_status_duration(client: TestClient) -> None:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(stream=buf)
    try:
        client.post("/retrieve", json={"query": "red"}, headers={"X-Request-ID": "log-me-7"})
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    access = [x for x in lines if x["logger"] == "realmqa.access" and x["request_id"] == "log-me-7"]
    assert len(access) == 1
    assert access[0]["route"] == "/retrieve" and access[0]["status"] == 200 and access[0]["method"] == "POST"
    assert access[0]["duration_ms"] > 0 and access[0]["level"] == "INFO"


def test_openapi_declares_statuses_limits_security_and_metrics(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    ops = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
    err = "#/components/schemas/ErrorResponse"
    want = {("POST", "/answer"): {400, 404, 413, 422, 429, 500, 503, 504},
            ("POST", "/retrieve"): {400, 404, 413, 422, 429, 500, 503, 504},
            ("GET", "/readyz"): {500, 503}, ("GET", "/healthz"): {500, 503},
            ("POST", "/v1/models/{name}/versions/{version}/load"): {401, 403, 404, 409, 413, 422, 500},
            ("POST", "/v1/indexes/{name}/versions/{version}/activate"): {401, 403, 404, 409, 413, 422, 500},
            ("POST", "/v1/indexes/{name}/builds"): {400, 401, 403, 404, 413, 422, 500}}
    for key, statuses in want.items():
        responses = ops[key]["responses"]
        assert {int(s) for s in responses if s.startswith(("4", "5"))} == statuses, key
        for s in statuses:
            assert responses[str(s)]["content"]["application/json"]["schema"]["$ref"] == err, (key, s)
    for key, op in ops.items():
        for status, response in op["responses"].items():
            assert "X-Request-ID" in response["headers"], (key, status)
    assert "Retry-After" in ops["POST", "/answer"]["responses"]["429"]["headers"]
    schemas = doc["components"]["schemas"]
    question = schemas["AnswerRequest"]["properties"]["question"]
    assert question["maxLength"] == 300 and question["minLength"] == 1
    assert schemas["RetrieveRequest"]["properties"]["query"]["maxLength"] == 300
    assert {"type": "integer", "minimum": 1, "maximum": 7} in \
        schemas["AnswerRequest"]["properties"]["reader_beam_size"]["anyOf"]
    assert {"type": "integer", "minimum": 1, "maximum": 9} in schemas["RetrieveRequest"]["properties"]["k"]["anyOf"]
    assert doc["components"]["securitySchemes"]["admin"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["admin"]["description"]}
    admin = [k for k in ops if "/versions/" in k[1] or k[1].endswith("/builds")]
    assert len(admin) == 4 and all(ops[k]["security"] == [{"admin": []}] for k in admin)
    assert all("security" not in ops[k] for k in ops if k not in admin)
    assert list(ops["GET", "/metrics"]["responses"]["200"]["content"]) == ["text/plain"]
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")



def _probe(c: TestClient, path: str) -> tuple[int, dict[str, Any]]:
    r = c.get(path, headers={"X-Request-ID": f"probe-{path[1:]}"})
    assert r.headers["X-Request-ID"] == f"probe-{path[1:]}"
    body = r.json()
    for check in body.get("checks", {}).values():
        check.pop("checked_s_ago", None)  # differs between two apps' background checks
    return r.status_code, body


def test_probes_answered_before_routing_equal_the_routes(tiny_home: Path) -> None:
    """GET /healthz and /readyz are answered by service.probes.ProbeMiddleware before FastAPI's routing (a probe
    costs little); its answers equal the routes' own (the same app without that middleware), ready and not, and
    a probe still gets its request id, its access log line and its count under its route."""
    settings = Settings(home=tiny_home, build_missing_index=False)
    fast, routed = create_app(settings), create_app(settings)
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not ProbeMiddleware]
    assert len(routed.user_middleware) == len(fast.user_middleware) - 1
    buf = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(stream=buf)
    try:
        with TestClient(fast) as f, TestClient(routed) as r:
            wait_for(f, "/readyz", 200)
            wait_for(r, "/readyz", 200)
            ready = {path: (_probe(f, path), _probe(r, path)) for path in ("/healthz", "/readyz")}
            for app in (fast, routed):
                app.state.batcher.failure = "the batching task raised RuntimeError"
            dead = {path: (_probe(f, path), _probe(r, path)) for path in ("/healthz", "/readyz")}
            for app in (fast, routed):
                app.state.batcher.failure = None
            metrics = f.get("/metrics").text
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert ready["/healthz"][0] == ready["/healthz"][1] == (200, {"status": "alive"})
    assert ready["/readyz"][0] == ready["/readyz"][1]
    assert ready["/readyz"][0][0] == 200 and ready["/readyz"][0][1]["models"] == ["tiny/1"]
    for path in ("/healthz", "/readyz"):
        assert dead[path][0] == dead[path][1]
        assert dead[path][0][0] == 503 and dead[path][0][1]["error"]["type"] == "not_ready"
    assert 'realmqa_requests_total{method="GET",route="/readyz",status="503"} 1.0' in metrics
    assert 'realmqa_requests_total{method="GET",route="/healthz",status="200"} 1.0' in metrics
    access = [(x["route"], x["status"]) for x in map(json.loads, buf.getvalue().splitlines())
              if x["logger"] == "realmqa.access" and x["request_id"] == "probe-readyz"]
    assert sorted(access) == [("/readyz", 200)] * 2 + [("/readyz", 503)] * 2  # each app's two probes
