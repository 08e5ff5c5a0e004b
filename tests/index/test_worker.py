"""The index worker: jobs, a build resumed after SIGKILL without redoing finished chunks, no partial version
ever listed, approximate index kinds (IVF-Flat, IVF-PQ, HNSW) against exact search on synthetic vectors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.chunks import LocalExecutor
from index.faiss_index import build_index, recall_at_k, set_search_params
from index.home import Home
from index.jobs import BuildProgress, job_work_dir, running_builds, submit_job
from index.options import BuildOptions, SearchParams, WorkerOptions
from index.pipeline import build_and_publish, corpus_request, read_progress
from index.version import list_versions, open_version
from index.worker import IndexWorker
from tests.service.tiny_home import write_corpus, write_model

REPO = Path(__file__).resolve().parents[2]


def tiny_model_home(root: Path, blocks: int) -> Home:
    write_model(root / "models" / "tiny" / "1")
    write_corpus(root / "corpus.jsonl", blocks)
    return Home(root)


def opts(chunk_blocks: int = 4096, **kw: object) -> WorkerOptions:
    return WorkerOptions(build=BuildOptions(chunk_blocks=chunk_blocks), **kw)  # type: ignore[arg-type]


def test_worker_builds_publishes_and_files_the_job(tmp_path: Path) -> None:
    home = tiny_model_home(tmp_path, 40)
    job = submit_job(home, "tiny", "tiny", str(home.root / "corpus.jsonl"), "IVF4,Flat")
    worker = IndexWorker(home, opts(16))
    assert worker.run_once() and not worker.run_once()
    iv = open_version(home.indexes_dir, "tiny", 1)
    assert iv.manifest.embedder == "tiny/1" and iv.manifest.factory == "IVF4,Flat" and iv.manifest.count == 40
    assert iv.manifest.embedder_id == home.model_version("tiny").embedder_id
    assert 0.0 < iv.manifest.extra["recall_at_k"] <= 1.0 and iv.manifest.extra["recall_k"] == 10
    assert iv.manifest.extra["chunks"] == 3
    done = json.loads((home.jobs_dir / "done" / f"{job.id}.json").read_text())
    assert done["version"] == 1
    assert not job_work_dir(home, job).exists()
    assert sorted(p.name for p in (home.indexes_dir / "tiny").iterdir()) == ["1"]


def test_a_failing_job_is_filed_with_its_reason(tmp_path: Path) -> None:
    home = tiny_model_home(tmp_path, 5)
    job = submit_job(home, "tiny", "nope", str(home.root / "corpus.jsonl"))
    assert IndexWorker(home).run_once()
    failed = json.loads((home.jobs_dir / "failed" / f"{job.id}.json").read_text())
    assert "nope" in failed["error"] and failed["attempts"] == 1 and list_versions(home.indexes_dir, "tiny") == []


def test_bad_factory_is_refused_at_submit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="factory"):
        submit_job(Home(tmp_path), "x", "m", "c.jsonl", "NotAnIndex")


def _worker(home: Home, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "index", "worker", "--home", str(home.root),
                             "--index-chunk-blocks", "16", "--once", *extra], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_killed_build_resumes_without_redoing_chunks(tmp_path: Path) -> None:
    home = tiny_model_home(tmp_path, 120)  # 8 chunks of 16
    job = submit_job(home, "tiny", "tiny", str(home.root / "corpus.jsonl"))
    work = job_work_dir(home, job)
    seen: list[list[int]] = []
    stop = threading.Event()

    def watch() -> None:  # every version ever listed must open and validate: never a partial one
        while not stop.is_set():
            vs = list_versions(home.indexes_dir, "tiny")
            seen.append(vs)
            for v in vs:
                open_version(home.indexes_dir, "tiny", v)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        p = _worker(home, "--index-chunk-pause-s", "0.3")
        deadline = time.monotonic() + 120
        while len(read_progress(work).get("embedded", [])) < 2:
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        first = len(read_progress(work)["embedded"])
        assert 2 <= first < 8
        assert list_versions(home.indexes_dir, "tiny") == []
        assert (home.jobs_dir / "running" / f"{job.id}.json").is_file()
        assert running_builds(home) == [BuildProgress(job.id, "tiny", first, first * 16)]

        p = _worker(home)
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()
    finally:
        stop.set()
        watcher.join()
    assert f"resuming after {first} finished chunks".encode() in out
    m = open_version(home.indexes_dir, "tiny", 1).manifest
    runs = [r["chunks"] for r in m.extra["embedding_runs"]]
    assert runs == [list(range(first)), list(range(first, 8))]  # nothing embedded twice
    assert m.count == 120 and m.extra["chunks"] == 8
    assert all(vs in ([], [1]) for vs in seen)
    assert not work.exists() and (home.jobs_dir / "done" / f"{job.id}.json").is_file()


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((32, d))
    x = centers[rng.integers(0, 32, n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("factory,min_recall,min_recall_held_out",
                         [("IVF16,Flat", 0.95, 0.95), ("IVF16,PQ16", 0.3, 0.3), ("HNSW32", 0.9, 0.6)])
def test_approximate_kinds_against_exact(tmp_path: Path, factory: str, min_recall: float,
                                         min_recall_held_out: float) -> None:
    """faiss ``tests/test_contrib.py`` style: an approximate index against brute force on synthetic vectors
    (recall on stored vectors as queries, as the build measures it, and on held-out queries)."""
    xb = _clustered(6000, 32)
    files = []
    for i, part in enumerate(np.array_split(xb, 3)):
        files.append(tmp_path / f"emb-{i}.npy")
        np.save(files[-1], part)
    index, extra = build_index([np.load(f, mmap_mode="r") for f in files], factory, train_sample=6000,
                               params=SearchParams(nprobe=16, ef_search=64))
    assert index.ntotal == 6000 and extra["recall_k"] == 10 and extra["recall_queries"] == 200
    assert min_recall <= extra["recall_at_k"] <= 1.0
    xq = _clustered(100, 32, seed=1)
    exact = faiss.IndexFlatIP(32)
    exact.add(xb)
    _, Ie = exact.search(xq, 10)
    set_search_params(index, 16, 64)
    D, I = index.search(xq, 10)
    assert recall_at_k(I, Ie) >= min_recall_held_out
    assert (np.diff(D, axis=1) <= 1e-5).all()  # best first
    if "PQ" not in factory:  # a stored vector finds itself
        _, I1 = index.search(xb[:50], 1)
        assert (I1[:, 0] == np.arange(50)).mean() > 0.9


def test_flat_has_no_recall_figure(tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", _clustered(300, 16))
    index, extra = build_index([np.load(tmp_path / "e.npy")], "Flat")
    assert index.ntotal == 300 and "recall_at_k" not in extra


def test_a_job_killed_after_publishing_is_not_published_twice(tmp_path: Path) -> None:
    home = tiny_model_home(tmp_path, 20)
    job = submit_job(home, "tiny", "tiny", str(home.root / "corpus.jsonl"))
    # the state a SIGKILL between publishing and filing the job leaves behind: its work directory says published
    work = job_work_dir(home, job)
    m = build_and_publish(home, corpus_request("tiny", home.model_version("tiny"), home.root / "corpus.jsonl"),
                          BuildOptions(), LocalExecutor(), work)
    assert read_progress(work)["published"] == m.version == 1
    (home.jobs_dir / f"{job.id}.json").rename(home.jobs_dir / "running" / f"{job.id}.json")
    assert IndexWorker(home).run_once()
    assert list_versions(home.indexes_dir, "tiny") == [1] and not work.exists()
    assert json.loads((home.jobs_dir / "done" / f"{job.id}.json").read_text())["version"] == 1


def test_cli_submit_queues_a_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    home = tiny_model_home(tmp_path, 5)
    main(["index", "submit", "--home", str(home.root), "--model", "tiny", "--corpus", str(home.root / "corpus.jsonl"),
          "--index", "tiny", "--factory", "HNSW32"])
    job_id = capsys.readouterr().out.strip()
    job = json.loads((home.jobs_dir / f"{job_id}.json").read_text())
    assert job == {"id": job_id, "index": "tiny", "model": "tiny", "corpus": str(home.root / "corpus.jsonl"),
                   "factory": "HNSW32", "executor": "local", "attempts": 0}
