"""Job claims that hold, on real worker processes: malformed jobs filed as failed while the next one publishes;
two workers on one job; a live worker's job left alone and a dead one's taken over; kill -9 during publish;
bounded attempts; a resume with another chunk size starts over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from index.chunks import Chunk, EmbedRequest, LocalExecutor
from index.home import Home
from index.jobs import BuildJob, job_work_dir, submit_job
from index.options import BuildOptions, WorkerOptions
from index.pipeline import build_and_publish, corpus_request, read_progress
from index.version import list_versions, open_version
from index.worker import IndexWorker
from tests.service.tiny_home import write_corpus, write_model

REPO = Path(__file__).resolve().parents[2]


def tiny_home(root: Path, blocks: int) -> Home:
    write_model(root / "models" / "tiny" / "1")
    write_corpus(root / "corpus.jsonl", blocks)
    return Home(root)


def worker(home: Home, *args: str, script: Path | None = None, env: dict[str, str] | None = None
           ) -> subprocess.Popen[str]:
    """``realmqa index worker --home HOME --once ARGS`` as a process (or ``script`` with those arguments)."""
    cmd = [str(script)] if script else ["-m", "service.cli"]
    return subprocess.Popen([sys.executable, *cmd, "index", "worker", "--home", str(home.root), "--once", *args],
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})},
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(cond, proc: subprocess.Popen[str], timeout_s: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else proc.returncode
        assert time.monotonic() < deadline
        time.sleep(0.02)


def hidden(home: Home, index: str) -> list[str]:
    parent = home.indexes_dir / index
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".")) if parent.is_dir() else []


def test_malformed_jobs_are_filed_as_failed_and_the_next_job_publishes(tmp_path: Path) -> None:
    """Regression: ``{"id": "x"}`` in jobs/ made the worker die with a TypeError, and every restart died on it."""
    home = tiny_home(tmp_path, 20)
    (home.jobs_dir).mkdir()
    (home.jobs_dir / "x.json").write_text('{"id": "x"}')
    (home.jobs_dir / "half.json").write_text("{")
    (home.jobs_dir / "latin1.json").write_bytes(b'{"id": "caf\xe9"}')
    job = submit_job(home, "tiny", "tiny", str(home.root / "corpus.jsonl"))
    p = worker(home)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    failed = {f.name: json.loads(f.read_text()) for f in (home.jobs_dir / "failed").iterdir()}
    assert sorted(failed) == ["half.json", "latin1.json", "x.json"]
    assert "field 'index' must be a non-empty string" in failed["x.json"]["error"]
    assert failed["x.json"]["text"] == '{"id": "x"}'
    assert "not a readable JSON job" in failed["half.json"]["error"] and failed["half.json"]["text"] == "{"
    assert "utf-8" in failed["latin1.json"]["error"]
    assert json.loads((home.jobs_dir / "done" / f"{job.id}.json").read_text())["version"] == 1
    assert list_versions(home.indexes_dir, "tiny") == [1] and not list(home.jobs_dir.glob("*.json"))


def test_two_workers_on_one_job_publish_one_version(tmp_path: Path) -> None:
    home = tiny_home(tmp_path, 48)
    job = submit_job(home, "tiny", "tiny", str(home.root / "corpus.jsonl"))
    ps = [worker(home, "--index-chunk-blocks", "16", "--index-chunk-pause-s", "0.2") for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in ps]
    assert [p.returncode for p in ps] == [0, 0], outs
    assert sum(f"job {job.id} (attempt 1)" in o for o in outs) == 1  # exactly one ran it
    assert list_versions(home.indexes_dir, "tiny") == [1]
    assert json.loads((home.jobs_dir / "done" / f"{job.id}.json").read_text())["attempts"] == 1


def test_a_live_workers_job_is_left_alone_and_a_dead_ones_taken_over(tmp_path: Path) -> None:
    home = tiny_home(tmp_path, 64)
    job = submit_job(home, "tiny", "tiny", str(home.root / "corpus.jsonl"))
    work = job_work_dir(home, job)
    # 8 chunks, >= 105 s after the first: B (a fresh process importing torch) must finish its look while A is
    # alive, also on a loaded machine; A is killed as soon as B has looked, so the pause costs nothing otherwise
    a = worker(home, "--index-chunk-blocks", "8", "--index-chunk-pause-s", "15")
    wait_for(lambda: len(read_progress(work).get("embedded", [])) >= 1, a)
    b = worker(home)  # A is alive: B must not touch its job
    out_b, _ = b.communicate(timeout=120)
    assert b.returncode == 0 and job.id not in out_b, out_b
    assert a.poll() is None and (home.jobs_dir / "running" / f"{job.id}.json").is_file()
    a.send_signal(signal.SIGKILL)
    a.wait()
    embedded = len(read_progress(work)["embedded"])
    c = worker(home, "--index-chunk-blocks", "8")  # A is dead: C takes the job over and resumes it
    out_c, _ = c.communicate(timeout=300)
    assert c.returncode == 0, out_c
    assert "taking over job" in out_c and f"resuming after {embedded} finished chunks" in out_c
    m = open_version(home.indexes_dir, "tiny", 1).manifest
    assert m.count == 64 and [r["chunks"] for r in m.extra["embedding_runs"]] == [
        list(range(embedded)), list(range(embedded, 8))]  # nothing embedded twice
    assert json.loads((home.jobs_dir / "done" / f"{job.id}.json").read_text())["attempts"] == 2


SLOW_PART = textwrap.dedent('''
    """A worker with a "marker" part: it writes marker.txt into the staging version, then (SLOW=1) sleeps."""
    import os, sys, time
    from index.pipeline import PART_BUILDERS
    from service.cli import main

    class Marker:
        def build(self, blocks, out, model):
            (out / "marker.txt").write_text(str(len(blocks)))
            if os.environ.get("SLOW") == "1":
                time.sleep(120)
            return {"file": "marker.txt"}

    PART_BUILDERS["marker"] = Marker
    main(sys.argv[1:])
''')


def test_kill_9_during_publish_leaves_no_staging_and_the_job_completes_once(tmp_path: Path) -> None:
    home = tiny_home(tmp_path, 20)
    script = tmp_path / "slow_worker.py"
    script.write_text(SLOW_PART)
    job = submit_job(home, "tiny", "tiny", str(home.root / "corpus.jsonl"))
    a = worker(home, "--index-parts", "marker", script=script, env={"SLOW": "1"})
    parent = home.indexes_dir / "tiny"
    wait_for(lambda: any(parent.glob(".staging-*/marker.txt")), a)  # inside publish: staging half written
    a.send_signal(signal.SIGKILL)
    a.wait()
    assert [n for n in hidden(home, "tiny") if n.startswith(".staging-")]  # the dead worker's leftovers
    b = worker(home, "--index-parts", "marker", script=script, env={"SLOW": "0"})
    out, _ = b.communicate(timeout=300)
    assert b.returncode == 0, out
    assert "left by a build that died" in out
    assert hidden(home, "tiny") == [] and list_versions(home.indexes_dir, "tiny") == [1]
    m = open_version(home.indexes_dir, "tiny", 1).manifest
    assert m.parts == {"marker": {"file": "marker.txt"}} and "marker.txt" in m.checksums
    assert json.loads((home.jobs_dir / "done" / f"{job.id}.json").read_text())["version"] == 1


def test_a_job_whose_workers_keep_dying_is_given_up(tmp_path: Path) -> None:
    home = tiny_home(tmp_path, 5)
    job = submit_job(home, "tiny", "tiny", str(home.root / "corpus.jsonl"))
    (home.jobs_dir / f"{job.id}.json").rename(home.jobs_dir / "running" / f"{job.id}.json")
    running = home.jobs_dir / "running" / f"{job.id}.json"
    running.write_text(json.dumps({**json.loads(running.read_text()), "attempts": 3}))  # 3 workers died on it
    assert IndexWorker(home, WorkerOptions(max_attempts=3)).run_once()
    failed = json.loads((home.jobs_dir / "failed" / f"{job.id}.json").read_text())
    assert "claimed 3 times without finishing" in failed["error"] and list_versions(home.indexes_dir, "tiny") == []


class FailAfter(LocalExecutor):
    """Embeds ``n`` chunks, then fails: the state a killed build leaves."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def embed(self, request: EmbedRequest, on_chunk) -> None:  # type: ignore[no-untyped-def]
        def once(chunk: Chunk) -> None:
            on_chunk(chunk)
            self.n -= 1
            if self.n == 0:
                raise RuntimeError("killed")

        super().embed(request, once)


def test_a_resume_with_another_chunk_size_starts_over(tmp_path: Path) -> None:
    home = tiny_home(tmp_path, 40)
    request = corpus_request("tiny", home.model_version("tiny"), home.root / "corpus.jsonl")
    work = home.work_dir("tiny", "job1")
    with pytest.raises(RuntimeError, match="killed"):
        build_and_publish(home, request, BuildOptions(chunk_blocks=8), FailAfter(2), work)
    assert read_progress(work)["embedded"] == [0, 1] and read_progress(work)["chunk_blocks"] == 8
    m = build_and_publish(home, request, BuildOptions(chunk_blocks=16), LocalExecutor(), work)
    assert m.count == 40 and m.extra["chunks"] == 3  # 16 + 16 + 8: all embedded again at the new size
    assert [r["chunks"] for r in m.extra["embedding_runs"]] == [[0, 1, 2]]


def test_killed_between_publishing_and_recording_it_is_not_published_again(tmp_path: Path) -> None:
    home = tiny_home(tmp_path, 10)
    request = corpus_request("tiny", home.model_version("tiny"), home.root / "corpus.jsonl")
    work = home.work_dir("tiny", "job1")
    m = build_and_publish(home, request, BuildOptions(), LocalExecutor(), work)
    progress = read_progress(work)
    del progress["published"]  # the rename happened, the progress write did not
    (work / "progress.json").write_text(json.dumps(progress))
    again = build_and_publish(home, request, BuildOptions(), LocalExecutor(), work)
    assert again == m and list_versions(home.indexes_dir, "tiny") == [1]


def test_job_fields_are_checked(tmp_path: Path) -> None:
    ok = {"id": "j1", "index": "tiny", "model": "tiny/1", "corpus": "c.jsonl"}
    assert BuildJob.from_dict(ok).factory == "Flat"
    for bad, match in [({**ok, "model": "tiny/²"}, "ASCII"), ({**ok, "index": "../x"}, "index name"),
                       ({**ok, "factory": "Bogus"}, "factory"), ({**ok, "executor": "gpu-farm"}, "executor"),
                       ({**ok, "extra": 1}, "unknown fields"), ([ok], "JSON object")]:
        with pytest.raises(ValueError, match=match):
            BuildJob.from_dict(bad)
