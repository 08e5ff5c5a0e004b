"""``realmqa serve --workers 2``: two processes on one port give the answers one process gives, one set of
metrics summed over both (kept when a worker dies and is replaced), 409 for model loads, a clean stop on
SIGTERM (real processes on a tiny random model, loopback only)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from service.cli import WORKER_SETTINGS_ENV, worker_app
from service.registry import load_engine
from tests.service.serve_process import Served, free_port, start_serve
from tests.service.tiny_home import make_tiny_home, questions

TOKEN = "workers-test-token-0123456789"


def _answered(url: str) -> tuple[float, int]:
    """(/answer requests answered 200, model_info series) as one scrape of /metrics reports them."""
    answered, info = 0.0, 0
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name == "realmqa_requests_total" and s.labels == {"route": "/answer", "method": "POST",
                                                                    "status": "200"}:
                answered += s.value
            elif s.name == "realmqa_model_info":
                info += 1
    return answered, info


def _answered_by(metrics_dir: Path, pid: int, tmp: Path) -> float:
    """/answer requests answered 200 by worker ``pid`` alone: its own files of the multiprocess directory."""
    own = tmp / f"only-{pid}"
    own.mkdir(exist_ok=True)
    for f in metrics_dir.glob(f"*_{pid}.db"):
        shutil.copyfile(f, own / f.name)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(own))
    return sum(s.value for m in registry.collect() for s in m.samples
               if s.name == "realmqa_requests_total" and s.labels.get("route") == "/answer")


def _workers(parent: int) -> set[int]:
    """The worker processes of a ``serve --workers`` parent (multiprocessing's spawned children)."""
    kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return {int(k) for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker processes from Linux /proc")
def test_two_workers_answer_as_one_process_and_share_their_metrics(tmp_path: Path) -> None:
    home = make_tiny_home(tmp_path / "h", blocks=300)
    qs = questions(12)
    engine = load_engine(home, "tiny", build_missing=False)
    expected = {q: a for q, a in zip(qs, engine.answer(qs, 5), strict=True)}
    (tmp_path / "token").write_text(TOKEN + "\n")  # a mounted secret: the workers get the token, not the file
    proc, url = start_serve(home, {"REALMQA_WORKERS": "2", "REALMQA_ADMIN_TOKEN_FILE": str(tmp_path / "token")})
    try:
        deadline = time.time() + 60
        while len(pids := _workers(proc.pid)) < 2 or proc.output().count("Application startup complete") < 2:
            assert time.time() < deadline, proc.output(tail=20)
            time.sleep(0.2)
        environ = Path(f"/proc/{min(pids)}/environ").read_bytes().split(b"\0")
        metrics_dir = Path(next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1]
                           .decode())
        with httpx.Client(base_url=url, timeout=30) as c:
            sent = 0
            while sent < len(qs) or min(_answered_by(metrics_dir, pid, tmp_path) for pid in pids) == 0:
                q = qs[sent % len(qs)]  # a new connection each: the kernel spreads them over the workers
                r = httpx.post(url + "/answer", json={"question": q}, timeout=30)
                sent += 1
                assert r.status_code == 200 and sent < 200, r.text
                got, want = r.json(), expected[q]
                assert (got["answer"], got["block"]["id"]) == (want.best.answer, want.best.block.block.id)
                assert got["score"] == pytest.approx(want.best.score, abs=1e-5)
            # both workers answered some; every scrape, whichever worker takes it, counts all, and what is served once
            assert {_answered(url) for _ in range(6)} == {(sent, 1)}

            r = c.post("/v1/models/tiny/versions/1/unload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 409, r.text
            assert r.json()["error"]["type"] == "conflict" and "2 worker processes" in r.json()["error"]["message"]

            # a worker killed outright is replaced; the answers it counted stay in the sums, its live gauges leave
            assert (metrics_dir / f"gauge_livesum_{min(pids)}.db").is_file()
            os.kill(min(pids), signal.SIGKILL)
            while not ((now := _workers(proc.pid)) - pids and len(now) == 2
                       and proc.output().count("Application startup complete") >= 3):
                assert time.time() < deadline + 60, proc.output(tail=20)
                time.sleep(0.2)
            assert c.post("/answer", json={"question": qs[0]}).status_code == 200
            assert {_answered(url)[0] for _ in range(6)} == {sent + 1}
            assert not (metrics_dir / f"gauge_livesum_{min(pids)}.db").exists()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert proc.output().count("Application shutdown complete") >= 2
        assert not metrics_dir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_workers_that_cannot_start_stop_the_server_with_status_3(tmp_path: Path) -> None:
    """A model the home does not have: each worker's start fails, and the parent exits with uvicorn's
    start-failure status instead of starting them again and again."""
    home = make_tiny_home(tmp_path / "h", blocks=50)
    proc = Served([sys.executable, "-m", "service.cli", "serve", "--home", str(home), "--model", "nope", "--port",
                   str(free_port()), "--workers", "2"], dict(os.environ))
    try:
        assert proc.wait(120) == 3, proc.output(tail=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("payload", [None, "{", '{"workers": 0}'])
def test_a_worker_without_valid_settings_exits_with_status_3(monkeypatch: pytest.MonkeyPatch,
                                                               payload: str | None) -> None:
    """No settings from the parent, or ones that do not validate: the start-failure status, which stops the
    parent (uvicorn would replace a worker whose app factory merely raised, forever)."""
    if payload is None:
        monkeypatch.delenv(WORKER_SETTINGS_ENV, raising=False)
    else:
        monkeypatch.setenv(WORKER_SETTINGS_ENV, payload)
    with pytest.raises(SystemExit) as e:
        worker_app()
    assert e.value.code == 3
