"""/metrics: parses with prometheus_client's own parser, counters and histograms move with requests, one
registry per app."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.registry import Registry
from service.settings import Settings
from tests.service.fake_engine import FakeEngine


def scrape(c: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def app(tmp_path: Path) -> TestClient:
    (tmp_path / "models").mkdir(exist_ok=True)
    return TestClient(create_app(Settings(home=tmp_path, max_body_bytes=500), Registry({"fake": FakeEngine()})))


def test_metrics_parse_and_move(tmp_path: Path) -> None:
    with app(tmp_path) as c:
        before = scrape(c)
        for _ in range(3):
            assert c.post("/answer", json={"question": "Denver?"}).status_code == 200
        c.post("/retrieve", json={"query": "x"})
        c.post("/answer", json={"question": "x", "model": "nope"})
        c.post("/answer", json={"question": "x", "pad": "y" * 600})
        after = scrape(c)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("realmqa_requests_total", route="/answer", method="POST", status="200") == 3
    assert delta("realmqa_requests_total", route="/retrieve", method="POST", status="200") == 1
    assert delta("realmqa_requests_total", route="/answer", method="POST", status="404") == 1
    assert delta("realmqa_requests_total", route="/answer", method="POST", status="413") == 1
    assert delta("realmqa_request_duration_seconds_count", route="/answer") == 5
    assert delta("realmqa_queue_wait_seconds_count") == 4
    assert delta("realmqa_batch_size_count", kind="answer") == 3
    assert delta("realmqa_read_duration_seconds_count", model="fake/1") == 3
    assert delta("realmqa_embed_duration_seconds_count", model="fake/1") == 1  # the fake's retrieve times embed
    assert after[("realmqa_model_info", (("index", "fake-index"), ("index_version", "1"), ("model", "fake"),
                                         ("version", "1")))] == 1
    assert after[("realmqa_index_blocks", (("index", "fake-index"), ("version", "1")))] == 3
    assert after[("realmqa_queue_depth", ())] == 0
    assert after[("realmqa_requests_in_flight", ())] == 1  # the scrape itself


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    with app(tmp_path) as a, app(tmp_path) as b:
        a.post("/answer", json={"question": "x"})
        key = ("realmqa_requests_total", (("method", "POST"), ("route", "/answer"), ("status", "200")))
        assert scrape(a)[key] == 1 and key not in scrape(b)


def test_load_counters(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    registry = Registry({"fake": FakeEngine()}, loader=lambda n, v: FakeEngine(f"{n}/{v}"),
                        on_disk=lambda: {"fake": [1, 2]})
    auth = {"Authorization": "Bearer 0123456789"}
    with TestClient(create_app(Settings(home=tmp_path, admin_token="0123456789"), registry)) as c:
        assert c.post("/v1/models/fake/versions/2/load", headers=auth).status_code == 200
        assert c.post("/v1/models/fake/versions/1/unload", headers=auth).status_code == 200
        m = scrape(c)
    assert m[("realmqa_model_loads_total", (("model", "fake/2"), ("result", "success")))] == 1
    assert m[("realmqa_model_swaps_total", (("model", "fake"),))] == 1
    assert m[("realmqa_model_unloads_total", (("model", "fake/1"),))] == 1
