"""The index worker (``realmqa index worker``): claims build jobs, runs the build pipeline, files, notifies.

Jobs and claims are :mod:`index.jobs`'s; the build is :func:`index.pipeline.build_and_publish` with the job's
resumable work directory, so a worker killed mid-build (or its successor taking the job over) embeds only
the chunks that were not finished. A malformed job is filed as failed with the reason and the worker goes on;
a failing build is filed as failed with its error. After publishing, the service is told to swap to the new
version when a URL is given (``worker_service_url``), or notices it by polling (``index_poll_interval_s``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from index.chunks import make_executor
from index.home import Home, remove_tree
from index.jobs import (
    BuildJob,
    Claim,
    JobError,
    claim_next,
    ensure_dirs,
    is_pending,
    job_work_dir,
    malformed_record,
    start_attempt,
)
from index.options import WorkerOptions
from index.pipeline import build_and_publish, corpus_request, read_progress
from index.version import Manifest

log = logging.getLogger(__name__)


def run_job(home: Home, job: BuildJob, opts: WorkerOptions) -> Manifest:
    """Build and publish the version of one job, resuming its work directory.

    The model version is resolved once, at the first attempt, and recorded in the job's progress: a resumed
    job keeps embedding with it (a newer version of the model that appeared meanwhile is not mixed in).

    Raises:
        LookupError: the model is not in the home; anything :func:`index.pipeline.build_and_publish` raises.
    """
    work = job_work_dir(home, job)
    recorded = read_progress(work).get("model")
    try:
        model = home.model_version(recorded if recorded else job.model)
    except LookupError:
        if not recorded:
            raise
        log.warning("job %s: model %s of the interrupted run is gone; resolving %s again", job.id, recorded, job.model)
        model = home.model_version(job.model)
    options = dataclasses.replace(opts.build, factory=job.factory)
    return build_and_publish(home, corpus_request(job.index, model, job.corpus), options,
                             make_executor(job.executor or opts.executor, opts.device), work)


def notify_service(url: str, token: str | None, name: str, version: int) -> None:
    """Ask the service to swap to the new version; a failure is logged (the service may also poll)."""
    import httpx

    try:
        r = httpx.post(f"{url.rstrip('/')}/v1/indexes/{name}/versions/{version}/activate",
                       headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=300)
        if r.status_code >= 400:
            log.warning("service refused to activate %s/%d: %s %s", name, version, r.status_code, r.text)
        else:
            log.info("service activated %s/%d: %s", name, version, r.text)
    except httpx.HTTPError as e:
        log.warning("could not notify %s of %s/%d: %s", url, name, version, e)


class IndexWorker:
    """Runs jobs one at a time until :meth:`stop`; jobs of dead workers first."""

    def __init__(self, home: str | Path | Home, opts: WorkerOptions | None = None) -> None:
        self.home = home if isinstance(home, Home) else Home(home)
        self.opts = opts or WorkerOptions()
        self._stop = threading.Event()
        ensure_dirs(self.home)

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> bool:
        """Run one job; False when there was none to claim. Staging and work directories of builds that died
        are removed first."""
        self.home.remove_dead_scratch(lambda job_id: is_pending(self.home, job_id))
        claim = claim_next(self.home)
        if claim is None:
            return False
        try:
            job = start_attempt(claim, self.opts.max_attempts)
        except JobError as e:
            log.warning("job %s filed as failed: %s", claim.name, e)
            claim.file("failed", malformed_record(claim, str(e)))
            return True
        self._run(claim, job)
        return True

    def _run(self, claim: Claim, job: BuildJob) -> None:
        log.info("job %s (attempt %d): building index %s from %s with %s (%s)", job.id, job.attempts, job.index,
                 job.corpus, job.model, job.factory)
        record: dict[str, Any] = asdict(job)
        m = None
        try:
            m = run_job(self.home, job, self.opts)
            record.update(version=m.version, extra=m.extra)
            state = "done"
        except Exception as e:  # a failed job is filed with its reason; the worker goes on
            log.exception("job %s failed", job.id)
            record["error"] = f"{type(e).__name__}: {e}"
            state = "failed"
        remove_tree(job_work_dir(self.home, job))
        claim.file(state, record)
        if m is not None and self.opts.service_url:
            notify_service(self.opts.service_url, self.opts.admin_token, m.name, m.version)

    def run_forever(self) -> None:
        while not self._stop.is_set():
            if not self.run_once():
                self._stop.wait(self.opts.poll_s)
