"""Hot index swap: a worker builds version 2 while /answer requests stream, the service swaps with no failed
request; polling finds a new version; a rollback sticks; a corrupt version is refused and the old one serves."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from index.home import Home
from index.jobs import job_work_dir, submit_job
from index.options import BuildOptions, WorkerOptions
from index.version import version_files
from index.worker import IndexWorker
from service.app import create_app
from service.settings import Settings
from tests.service.test_routes import assert_error
from tests.service.tiny_home import WORDS, questions, write_model

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_corpus(path: Path, n: int, prefix: str, seed: int) -> None:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"id": f"{prefix}-{i}", "title": rng.choice(WORDS),
                                        "text": " ".join(rng.choices(WORDS, k=rng.randint(8, 30)))}) + "\n"
                            for i in range(n)))


def opts(chunk_blocks: int, chunk_pause_s: float = 0.0, **kw: object) -> WorkerOptions:
    return WorkerOptions(build=BuildOptions(chunk_blocks=chunk_blocks, chunk_pause_s=chunk_pause_s),
                         **kw)  # type: ignore[arg-type]


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """A tiny model whose index ``tiny`` version 1 (blocks one-*) the worker built; corpus two.jsonl (two-*)."""
    write_model(tmp_path / "models" / "tiny" / "1")
    write_corpus(tmp_path / "one.jsonl", 30, "one", 1)
    write_corpus(tmp_path / "two.jsonl", 80, "two", 2)
    submit_job(Home(tmp_path), "tiny", "tiny", str(tmp_path / "one.jsonl"))
    assert IndexWorker(tmp_path, opts(16)).run_once()
    return tmp_path


@pytest.fixture()
def served(home: Path) -> Iterator[tuple[str, object]]:
    """The service on a real uvicorn server on 127.0.0.1: (base URL, app)."""
    app = create_app(Settings(home=home, admin_token=TOKEN, build_missing_index=False))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join()


def test_swap_under_load_loses_no_request(home: Path, served: tuple[str, object]) -> None:
    url, app = served
    old = app.state.registry.get(None).index  # type: ignore[attr-defined]
    worker = IndexWorker(home, opts(16, 0.05, poll_s=0.05, service_url=url,
                                             admin_token=TOKEN))
    wt = threading.Thread(target=worker.run_forever)
    wt.start()
    stop = threading.Event()
    results: list[list[tuple[int, str, str]]] = [[], []]

    def stream(out: list[tuple[int, str, str]], seed: int) -> None:
        qs = questions(50, seed)
        with httpx.Client(base_url=url, timeout=60) as c:
            i = 0
            while not stop.is_set():
                r = c.post("/answer", json={"question": qs[i % len(qs)], "reader_beam_size": 2})
                body = r.json()
                out.append((r.status_code, body.get("index", ""), body.get("block", {}).get("id", "")))
                i += 1

    streams = [threading.Thread(target=stream, args=(results[i], i + 1)) for i in range(2)]
    try:
        for t in streams:
            t.start()
        time.sleep(0.5)  # requests flow on version 1 first
        r = httpx.post(f"{url}/v1/indexes/tiny/builds", headers=AUTH,
                       json={"model": "tiny", "corpus": str(home / "two.jsonl")})
        assert r.status_code == 202 and r.json()["state"] == "queued"
        deadline = time.monotonic() + 180
        while sum(idx == "tiny/2" for res in results for _, idx, _ in res) < 10:
            assert time.monotonic() < deadline, "version 2 never served"
            time.sleep(0.1)
    finally:
        stop.set()
        for t in streams:
            t.join()
        worker.stop()
        wt.join()
    every = [x for res in results for x in res]
    assert [s for s, _, _ in every if s != 200] == []  # zero failed requests
    for res in results:
        idx = [i for _, i, _ in res]
        first2 = idx.index("tiny/2")
        assert set(idx[:first2]) == {"tiny/1"} and set(idx[first2:]) == {"tiny/2"}  # one flip, never back
        assert first2 > 0
    for _, idx, block in every:  # each answer's block comes from the version it names
        assert block.startswith("one-" if idx == "tiny/1" else "two-")
    assert old.blocks.closed  # the old version was released
    with httpx.Client(base_url=url) as c:
        versions = c.get("/v1/indexes").json()["indexes"][0]["versions"]
        assert [(v["version"], v["served_by"]) for v in versions] == [(1, []), (2, ["tiny/1"])]
        metrics = c.get("/metrics").text
    assert 'realmqa_index_version{index="tiny",model="tiny/1"} 2.0' in metrics
    assert 'realmqa_index_swaps_total{index="tiny",result="success"} 1.0' in metrics


def test_polling_swaps_and_a_rollback_sticks(home: Path) -> None:
    settings = Settings(home=home, admin_token=TOKEN, build_missing_index=False, index_poll_interval_s=0.1)
    with TestClient(create_app(settings)) as c:
        assert c.post("/answer", json={"question": "alpha?"}).json()["index"] == "tiny/1"
        submit_job(Home(home), "tiny", "tiny", str(home / "two.jsonl"), "IVF4,Flat")
        assert IndexWorker(home, opts(32)).run_once()  # no notification: polling
        deadline = time.monotonic() + 30
        while (r := c.post("/answer", json={"question": "alpha?"}).json())["index"] != "tiny/2":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert r["block"]["id"].startswith("two-")
        r = c.post("/v1/indexes/tiny/versions/1/activate", headers=AUTH)  # rollback
        assert r.status_code == 200 and r.json() == {"index": "tiny/1", "served_by": ["tiny/1"]}
        time.sleep(0.4)  # several polls: they must not undo the rollback
        r = c.post("/answer", json={"question": "alpha?"}).json()
        assert r["index"] == "tiny/1" and r["block"]["id"].startswith("one-")


def test_corrupt_or_foreign_version_is_refused_and_the_old_one_serves(home: Path) -> None:
    """Also a regression test: a corrupt newest index version stopped the service's start (``load_engine``
    opened only the newest by ``created_at``, and two versions of one second tied by listing order); the
    start now skips it for the newest version that opens."""
    submit_job(Home(home), "tiny", "tiny", str(home / "two.jsonl"))
    assert IndexWorker(home, opts(32)).run_once()
    f = version_files(home / "indexes" / "tiny" / "2").faiss_index
    f.chmod(0o644)
    f.write_bytes(f.read_bytes()[:-64])  # truncated: an open checks sizes (a flipped byte: realmqa index verify)
    write_model(home / "models" / "other" / "1", seed=7)
    submit_job(Home(home), "foreign", "other", str(home / "two.jsonl"))
    assert IndexWorker(home, opts(32)).run_once()
    with TestClient(create_app(Settings(home=home, admin_token=TOKEN, build_missing_index=False,
                                        model="tiny"))) as c:
        before = c.post("/answer", json={"question": "alpha bravo?"}).json()
        r = c.post("/v1/indexes/tiny/versions/2/activate", headers=AUTH)
        assert_error(r, 409, "index")
        assert r.json()["error"]["type"] == "index_rejected" and "the manifest says" in r.json()["error"]["message"]
        r = c.post("/v1/indexes/foreign/versions/1/activate", headers=AUTH)
        assert_error(r, 409, "index")
        assert "other/1, whose block embedder no served model has" in r.json()["error"]["message"]
        assert_error(c.post("/v1/indexes/tiny/versions/9/activate", headers=AUTH), 404, "index")
        assert_error(c.post("/v1/indexes/tiny/versions/1/activate"), 401, None)
        after = c.post("/answer", json={"question": "alpha bravo?"}).json()
        assert after["index"] == "tiny/1" and after == {**before, "timings_ms": after["timings_ms"]}
        assert c.get("/readyz").status_code == 200
        assert 'realmqa_index_swaps_total{index="tiny",result="failure"} 1.0' in c.get("/metrics").text


def test_build_route_validates_and_writes_a_job(home: Path) -> None:
    with TestClient(create_app(Settings(home=home, admin_token=TOKEN, build_missing_index=False))) as c:
        assert_error(c.post("/v1/indexes/tiny/builds", headers=AUTH, json={"model": "nope", "corpus": "x"}),
                     404, "model")
        assert_error(c.post("/v1/indexes/tiny/builds", headers=AUTH,
                            json={"model": "tiny", "corpus": str(home / "missing.jsonl")}), 422, "corpus")
        assert_error(c.post("/v1/indexes/tiny/builds", headers=AUTH,
                            json={"model": "tiny", "corpus": str(home / "two.jsonl"), "factory": "Bogus"}),
                     422, "factory")
        assert_error(c.post("/v1/indexes/tiny/builds", headers=AUTH, json={"corpus": "x"}), 422, "model")
        r = c.post("/v1/indexes/tiny/builds", headers=AUTH,
                   json={"model": "tiny", "corpus": str(home / "two.jsonl"), "factory": "HNSW32"})
        assert r.status_code == 202
        job = json.loads((home / "jobs" / f"{r.json()['job']}.json").read_text())
        assert job["index"] == "tiny" and job["factory"] == "HNSW32" and job["corpus"] == str(home / "two.jsonl")


def test_metrics_show_running_builds(home: Path) -> None:
    job = submit_job(Home(home), "tiny", "tiny", str(home / "two.jsonl"))
    (home / "jobs" / f"{job.id}.json").rename(home / "jobs" / "running" / f"{job.id}.json")
    work = job_work_dir(Home(home), job)
    work.mkdir()
    (work / "progress.json").write_text(json.dumps({"block_chunks": [16, 16, 16], "embedded": [0, 1], "runs": []}))
    with TestClient(create_app(Settings(home=home, build_missing_index=False))) as c:
        assert f'realmqa_index_build_blocks{{index="tiny",job="{job.id}"}} 32.0' in c.get("/metrics").text
