"""``realmqa serve`` on SIGTERM: stops accepting, finishes the queued requests, exits (a real process on a
tiny random model, loopback only)."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.serve_process import start_serve
from tests.service.tiny_home import make_tiny_home, questions


def _scrape(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name == "realmqa_requests_total" and s.labels["route"] == "/answer":
                out["answered"] = out.get("answered", 0) + s.value
            elif not s.labels:
                out[s.name] = s.value
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_queued_requests(tmp_path: Path, workers: int) -> None:
    """One process, or ``--workers 2`` (uvicorn's supervisor passes SIGTERM to each worker; metrics summed)."""
    home = make_tiny_home(tmp_path / "h", blocks=300)
    proc, url = start_serve(home, {"REALMQA_MAX_BATCH_SIZE": "1", "REALMQA_SHUTDOWN_TIMEOUT_S": "60",
                                   "REALMQA_TORCH_THREADS": "1", "REALMQA_WORKERS": str(workers)})
    try:
        qs = questions(16)
        deadline = time.time() + 60
        with ThreadPoolExecutor(len(qs)) as pool:
            futures = [pool.submit(httpx.post, url + "/answer", json={"question": q, "reader_beam_size": 50},
                                   timeout=120) for q in qs]
            while True:  # every request has arrived (answered or in flight), some still queued
                m = _scrape(url)
                arrived = m.get("realmqa_requests_in_flight", 0) - 1 + m.get("answered", 0)
                assert time.time() < deadline
                if arrived >= len(qs):
                    break
                time.sleep(0.02)
            assert m.get("realmqa_queue_depth", 0) >= 1, m
            proc.send_signal(signal.SIGTERM)
            statuses = [f.result().status_code for f in futures]
        assert statuses == [200] * len(qs)
        # uvicorn re-raises the captured SIGTERM once shut down, so the exit is "killed by SIGTERM", cleanly
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in proc.output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
