"""Build jobs on disk: submit, claim, progress, file as done or failed (what the service imports).

A job is a JSON file ``{"id", "index", "model", "corpus", "factory"?, "executor"?}`` in the home's
``jobs/`` (written atomically by :func:`submit_job`). Its life:

* **queued** ``jobs/<id>.json`` → **claimed**: a worker takes ``jobs/.locks/<id>.lock`` with
  ``fcntl.flock`` (exclusive, non-blocking) and, holding it, renames the file into ``jobs/running/``. The lock
  is held until the job is filed, and the kernel drops it when the worker dies: so a job in ``running/``
  whose lock can be taken belongs to a dead worker and is taken over (resumed), and one whose lock cannot be
  taken belongs to a live worker and is left alone. Two workers never run one job.
* every claim counts an attempt (rewritten into the running file); a job claimed ``max_attempts`` times
  without being filed (its workers kept dying) is filed as failed.
* **done** ``jobs/done/<id>.json`` (with the version published) or **failed** ``jobs/failed/<id>.json``
  (with the ``error``). A job file that is not UTF-8 JSON of the right fields is filed as failed with the
  reason (and its text), and the worker goes on.

The work of a running job lives in ``indexes/<index>/.work-<id>/`` (:mod:`index.pipeline`), which also holds
its progress: :func:`running_builds` reads it for the service's metrics.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from index.home import NAME_RE, Home, check_name, split_ref
from index.options import EXECUTORS, BuildOptions
from index.pipeline import blocks_embedded, read_progress
from realm_core.atomic import write_atomic

log = logging.getLogger(__name__)

STATES = ("running", "done", "failed")
MAX_TEXT = 2000  # characters of a malformed job's text kept in its failed record


class JobError(ValueError):
    """A job file that cannot be run as written; the message says why."""


@dataclass(frozen=True)
class BuildJob:
    id: str
    index: str  # index name: the version is published under <indexes>/<index>/
    model: str  # model name or name/version whose block embedder embeds
    corpus: str  # JSON Lines corpus path, as the worker sees it
    factory: str = "Flat"  # faiss index_factory string
    executor: str | None = None  # one of EXECUTORS; None: the worker's (setting index_executor)
    attempts: int = 0  # claims so far

    @classmethod
    def from_dict(cls, d: Any) -> BuildJob:
        """Raises: JobError naming the field at fault."""
        if not isinstance(d, dict):
            raise JobError(f"a job is a JSON object, got {type(d).__name__}")
        for f in ("id", "index", "model", "corpus"):
            if not isinstance(d.get(f), str) or not d[f]:
                raise JobError(f"field {f!r} must be a non-empty string")
        for f in ("factory", "executor"):
            if f in d and not isinstance(d[f], str) and not (f == "executor" and d[f] is None):
                raise JobError(f"field {f!r} must be a string")
        if not isinstance(d.get("attempts", 0), int):
            raise JobError("field 'attempts' must be an integer")
        unknown = set(d) - {"id", "index", "model", "corpus", "factory", "executor", "attempts"}
        if unknown:
            raise JobError(f"unknown fields {sorted(unknown)}")
        job = cls(**d)
        try:
            check_name(job.id, "job id")
            check_name(job.index, "index name")
            split_ref(job.model)
            BuildOptions(factory=job.factory).check()
        except ValueError as e:
            raise JobError(str(e)) from None
        if job.executor is not None and job.executor not in EXECUTORS:
            raise JobError(f"field 'executor' must be one of {list(EXECUTORS)}, got {job.executor!r}")
        return job

    @classmethod
    def read(cls, path: Path) -> BuildJob:
        """Raises: JobError: unreadable, not UTF-8 JSON, bad fields, or an id other than the file's name."""
        try:
            d = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise JobError(f"not a readable JSON job: {e}") from None
        job = cls.from_dict(d)
        if job.id != path.stem:
            raise JobError(f"id {job.id!r} differs from the file name {path.name!r}")
        return job


def submit_job(home: Home, index: str, model: str, corpus: str, factory: str = "Flat",
               executor: str | None = None) -> BuildJob:
    """Write a build job into ``jobs/`` atomically (a worker never sees half a job file).

    Raises:
        JobError: a bad index name, model ref, factory string or executor.
    """
    job = BuildJob.from_dict({"id": time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8], "index": index,
                              "model": model, "corpus": corpus, "factory": factory, "executor": executor})
    ensure_dirs(home)
    write_atomic(home.jobs_dir / f"{job.id}.json", json.dumps(asdict(job)))
    return job


def job_work_dir(home: Home, job: BuildJob) -> Path:
    return home.work_dir(job.index, job.id)


def is_pending(home: Home, job_id: str) -> bool:
    """Whether job ``job_id`` is queued or running (its work directory may still be resumed)."""
    return any((d / f"{job_id}.json").exists() for d in (home.jobs_dir, home.jobs_dir / "running"))


class Claim:
    """A job this process runs: its running file and the lock that says so (released by :meth:`file`)."""

    def __init__(self, home: Home, path: Path, fd: int) -> None:
        self.home, self.path, self._fd = home, path, fd

    @property
    def name(self) -> str:
        return self.path.stem

    def file(self, state: str, record: dict[str, Any]) -> None:
        """File the job under ``jobs/<state>/`` with ``record``, remove the running file, release the lock."""
        assert state in ("done", "failed")
        write_atomic(self.home.jobs_dir / state / self.path.name, json.dumps(record))
        self.path.unlink(missing_ok=True)
        self.release(remove_lock=True)

    def release(self, remove_lock: bool = False) -> None:
        if self._fd < 0:
            return
        if remove_lock:
            _lock_path(self.home, self.name).unlink(missing_ok=True)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = -1


def _lock_path(home: Home, name: str) -> Path:
    return home.jobs_dir / ".locks" / f"{name}.lock"


def _try_lock(home: Home, name: str) -> int | None:
    """The descriptor holding ``name``'s job lock, or None when another live process holds it."""
    fd = os.open(_lock_path(home, name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def ensure_dirs(home: Home) -> None:
    for d in (*STATES, ".locks"):
        (home.jobs_dir / d).mkdir(parents=True, exist_ok=True)


def claim_next(home: Home) -> Claim | None:
    """Claim a job: first one in ``running/`` whose worker died (take-over), else the oldest queued one.
    None when there is none this process may run."""
    ensure_dirs(home)
    running = home.jobs_dir / "running"
    for p in sorted(running.glob("*.json")):
        fd = _try_lock(home, p.stem) if NAME_RE.fullmatch(p.stem) else None
        if fd is None:
            continue  # a live worker runs it (or a name no job has: filed by the queued scan below)
        if p.is_file():  # still there once locked: its worker died
            log.info("taking over job %s from a worker that died", p.stem)
            return Claim(home, p, fd)
        os.close(fd)
    for p in sorted(home.jobs_dir.glob("*.json")):
        if not NAME_RE.fullmatch(p.stem):
            _file_malformed(home, p, f"file name {p.name!r} is not a job id ({NAME_RE.pattern})")
            continue
        fd = _try_lock(home, p.stem)
        if fd is None:
            continue
        try:
            os.rename(p, running / p.name)
        except FileNotFoundError:  # claimed and filed by another worker meanwhile
            os.close(fd)
            continue
        return Claim(home, running / p.name, fd)
    return None


def _file_malformed(home: Home, path: Path, reason: str) -> None:
    """File an unrunnable queued job file as failed with the reason and (part of) its text."""
    try:
        text = path.read_bytes()[:MAX_TEXT].decode("utf-8", "backslashreplace")
    except OSError as e:
        text = f"<unreadable: {e}>"
    name = path.name if NAME_RE.fullmatch(path.stem) else f"malformed-{uuid.uuid4().hex[:8]}.json"
    ensure_dirs(home)
    write_atomic(home.jobs_dir / "failed" / name, json.dumps({"file": path.name, "error": reason, "text": text}))
    path.unlink(missing_ok=True)
    log.warning("job file %s filed as failed: %s", path.name, reason)


def start_attempt(claim: Claim, max_attempts: int) -> BuildJob:
    """Read a claimed job and count this attempt.

    Raises:
        JobError: the job is malformed, or it was already claimed ``max_attempts`` times.
    """
    job = BuildJob.read(claim.path)
    if job.attempts >= max_attempts:
        raise JobError(f"claimed {job.attempts} times without finishing (its workers died); giving up")
    job = BuildJob(**{**asdict(job), "attempts": job.attempts + 1})
    write_atomic(claim.path, json.dumps(asdict(job)))
    return job


def malformed_record(claim: Claim, reason: str) -> dict[str, Any]:
    try:
        text = claim.path.read_bytes()[:MAX_TEXT].decode("utf-8", "backslashreplace")
    except OSError as e:
        text = f"<unreadable: {e}>"
    return {"file": claim.path.name, "error": reason, "text": text}


@dataclass(frozen=True)
class BuildProgress:
    job: str
    index: str
    chunks: int  # chunks embedded so far
    blocks: int  # blocks embedded so far


def running_builds(home: Home) -> list[BuildProgress]:
    """Progress of the jobs in ``jobs/running/``, from their work directories (for the service's metrics)."""
    out = []
    for p in sorted((home.jobs_dir / "running").glob("*.json")):
        try:
            job = BuildJob.read(p)
        except JobError:  # a job filed, removed or malformed while we looked
            continue
        prog = read_progress(job_work_dir(home, job))
        out.append(BuildProgress(job.id, job.index, len(prog.get("embedded", [])), blocks_embedded(prog)))
    return out
