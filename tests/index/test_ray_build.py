"""Ray builds (index/ray_embed.py through the one build pipeline) against local builds, on a local Ray with 2
CPUs: the version a Ray build publishes gives the local build's ``/retrieve`` top 5 for every test query, and a
Ray build SIGKILLed mid-way resumes without embedding a finished chunk again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.home import Home
from index.jobs import job_work_dir, running_builds, submit_job
from index.options import BuildOptions, WorkerOptions
from index.pipeline import read_progress
from index.version import list_versions, open_version
from index.worker import IndexWorker
from service.app import create_app
from service.settings import Settings
from tests.service.tiny_home import questions, write_corpus, write_model

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


def _home(root: Path, blocks: int) -> Home:
    write_model(root / "models" / "tiny" / "1")  # seed 0: the same weights in every home
    write_corpus(root / "corpus.jsonl", blocks)
    return Home(root)


def _top5(home: Home, qs: list[str]) -> list[list[tuple[str, float]]]:
    with TestClient(create_app(Settings(home=home.root, build_missing_index=False))) as client:
        out = []
        for q in qs:
            r = client.post("/retrieve", json={"query": q, "k": 5})
            assert r.status_code == 200, r.text
            out.append([(b["id"], b["score"]) for b in r.json()["blocks"]])
    return out


def test_ray_build_publishes_the_local_builds_version(ray_address: str, tmp_path: Path) -> None:
    homes = {ex: _home(tmp_path / ex, 2000) for ex in ("local", "ray")}
    for ex, home in homes.items():  # "executor" in the job; the worker's default stays local
        submit_job(home, "tiny", "tiny", str(home.root / "corpus.jsonl"), executor=ex)
        assert IndexWorker(home, WorkerOptions(build=BuildOptions(chunk_blocks=256))).run_once()
    ms = {ex: open_version(h.indexes_dir, "tiny", 1).manifest for ex, h in homes.items()}
    assert ms["local"].count == ms["ray"].count == 2000 and ms["ray"].extra["chunks"] == 8
    assert sorted(ms["ray"].extra["embedding_runs"][0]["chunks"]) == list(range(8))
    qs = questions(40)
    local, ray = _top5(homes["local"], qs), _top5(homes["ray"], qs)
    for q, a, b in zip(qs, local, ray):
        assert [i for i, _ in a] == [i for i, _ in b], q
        assert all(abs(x - y) <= 1e-4 for (_, x), (_, y) in zip(a, b)), q


def _ray_worker(home: Home, address: str, *extra: str) -> subprocess.Popen[bytes]:
    """``realmqa index worker --executor ray`` joining the test's Ray through ``RAY_ADDRESS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "RAY_ADDRESS": address}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "index", "worker", "--home", str(home.root),
                             "--executor", "ray", "--index-chunk-blocks", "16", "--once", *extra],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_killed_ray_build_resumes_without_reembedding(ray_address: str, tmp_path: Path) -> None:
    home = _home(tmp_path, 120)  # 8 chunks of 16 blocks
    job = submit_job(home, "tiny", "tiny", str(home.root / "corpus.jsonl"))  # no executor: the worker's (ray)
    work = job_work_dir(home, job)
    p = _ray_worker(home, ray_address, "--index-chunk-pause-s", "1")
    deadline = time.monotonic() + 300
    while len(read_progress(work).get("embedded", [])) < 2:
        assert p.poll() is None and time.monotonic() < deadline, p.stdout.read().decode() if p.stdout else ""
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = set(read_progress(work)["embedded"])
    assert 2 <= len(first) < 8 and list_versions(home.indexes_dir, "tiny") == []
    assert [(b.chunks, b.blocks) for b in running_builds(home)] == [(len(first), len(first) * 16)]  # as local

    p = _ray_worker(home, ray_address)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out.decode()
    assert f"resuming after {len(first)} finished chunks".encode() in out
    m = open_version(home.indexes_dir, "tiny", 1).manifest
    runs = [set(r["chunks"]) for r in m.extra["embedding_runs"]]
    assert runs == [first, set(range(8)) - first]  # every chunk embedded once: none of the first run again
    assert m.count == 120 and not work.exists()
