"""The index worker (``realmqa index worker``): takes build jobs, embeds, validates, publishes, notifies.

Jobs are JSON files ``{"id", "index", "model", "corpus", "factory"}`` in ``<home>/jobs/`` (written by
:func:`submit_job`, e.g. from the service's ``POST /v1/indexes/{name}/builds``). A worker claims one by
renaming it into ``jobs/running/`` (atomic: two workers never claim the same job), and files it under
``jobs/done/`` or ``jobs/failed/`` when it ends.

A build is resumable. Its work directory ``<indexes>/<name>/.job-<id>/`` (hidden: never a version) holds
one float32 ``emb-NNNNN.npy`` and one Arrow ``blocks-NNNNN.arrow`` per chunk of ``chunk_blocks`` blocks
and ``progress.json`` (rewritten atomically after each chunk). A worker killed mid-build finds the job in
``jobs/running/`` on restart and embeds only the chunks after the last finished one. The FAISS index is
then built from the chunk files through memory maps (no Python object per block), trained on a sample
when the factory needs it, and approximate kinds get their recall@k against exact search measured on
sampled block embeddings (stored in the manifest's ``extra``). The version is smoke-searched and
published atomically (:func:`index.version.publish`); the service is told to swap to it when a URL and
token are given, or notices it by polling (``index_poll_interval_s``).

faiss names as in :mod:`index.faiss_index`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from index.block_store import Block, BlockStoreWriter
from index.build import block_embedding_text
from index.corpus import read_corpus, split_blocks
from index.faiss_index import needs_training, new_index, recall_at_k, set_search_params
from index.version import Manifest, publish, remove_staging, staging_dir, version_files

log = logging.getLogger(__name__)

JOB_STATES = ("running", "done", "failed")


@dataclass(frozen=True)
class BuildJob:
    id: str
    index: str  # index name: the version is published under <indexes>/<index>/
    model: str  # model name or name/version whose block embedder embeds
    corpus: str  # JSON Lines corpus path
    factory: str = "Flat"  # faiss index_factory string

    @classmethod
    def read(cls, path: Path) -> BuildJob:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class WorkerOptions:
    chunk_blocks: int = 4096  # blocks embedded, then saved, per resumable step
    batch_size: int = 64  # texts per embedding forward pass
    train_sample: int = 262144  # most block embeddings an IVF/PQ index is trained on
    recall_queries: int = 200  # sampled block embeddings used as queries for recall@k
    recall_k: int = 10
    nprobe: int = 16  # search parameters recall is measured with (the service sets its own at load)
    ef_search: int = 64
    chunk_pause_s: float = 0.0  # sleep after each chunk (throttling on a shared machine; tests)
    poll_s: float = 1.0  # how often the jobs directory is looked at
    service_url: str | None = None  # POST .../activate there after publishing (with admin_token)
    admin_token: str | None = None


def jobs_dir(home: Path) -> Path:
    return Path(home) / "jobs"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def submit_job(home: Path, index: str, model: str, corpus: str, factory: str = "Flat") -> BuildJob:
    """Write a build job into ``<home>/jobs/`` atomically (a worker never sees half a job file).

    Raises:
        ValueError: ``factory`` is not a faiss factory string.
    """
    new_index(768, factory)  # fails early on a bad string (768: divisible by the usual PQ sub-quantizer counts)
    job = BuildJob(time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8], index, model, corpus, factory)
    d = jobs_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    _write_atomic(d / f"{job.id}.json", json.dumps(asdict(job)))
    return job


def claim_next(home: Path) -> Path | None:
    """Claim the oldest queued job by renaming it into ``jobs/running/``; None when there is none."""
    d = jobs_dir(home)
    running = d / "running"
    running.mkdir(parents=True, exist_ok=True)
    for p in sorted(d.glob("*.json")):
        try:
            os.rename(p, running / p.name)
        except FileNotFoundError:  # another worker claimed it first
            continue
        return running / p.name
    return None


def job_work_dir(home: Path, job: BuildJob) -> Path:
    """The job's resumable work directory: hidden, so never taken for a version."""
    return Path(home) / "indexes" / job.index / f".job-{job.id}"


def read_progress(work: Path) -> dict[str, Any]:
    p = work / "progress.json"
    if p.is_file():
        return json.loads(p.read_text())  # type: ignore[no-any-return]
    return {"chunks_done": 0, "blocks": 0, "runs": []}


@dataclass(frozen=True)
class BuildProgress:
    job: str
    index: str
    chunks: int  # chunks embedded so far
    blocks: int  # blocks embedded so far


def running_builds(home: Path) -> list[BuildProgress]:
    """Progress of the jobs in ``jobs/running/``, from their progress files (for the service's metrics)."""
    out = []
    for p in sorted((jobs_dir(home) / "running").glob("*.json")):
        try:
            job = BuildJob.read(p)
            prog = read_progress(job_work_dir(home, job))
        except (OSError, ValueError, TypeError):  # a job filed or removed while we looked
            continue
        out.append(BuildProgress(job.id, job.index, int(prog["chunks_done"]), int(prog["blocks"])))
    return out


def _chunk_paths(work: Path, i: int) -> tuple[Path, Path]:
    return work / f"emb-{i:05d}.npy", work / f"blocks-{i:05d}.arrow"


def _load_model(home: Path, ref: str) -> Any:
    from realm_core.model_dir import load_model_dir

    name, _, v = ref.partition("/")
    d = Path(home) / "models" / name
    versions = sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []
    if not versions or (v and int(v) not in versions):
        raise FileNotFoundError(f"model {ref!r} is not in {Path(home) / 'models'}")
    version = int(v) if v else versions[-1]
    return load_model_dir(d / str(version), name, version)


def embed_chunks(model: Any, job: BuildJob, work: Path, opts: WorkerOptions) -> dict[str, Any]:
    """Embed the corpus chunk by chunk into ``work``, skipping the chunks a previous run finished."""
    import torch

    from realm_core.model_dir import embed_texts

    device = torch.device("cuda") if torch.cuda.is_available() else None  # embed on the GPU when torch sees one
    if device is not None:
        model.block.embedder.to(device)
    stat = os.stat(job.corpus)
    corpus_stamp = [stat.st_size, stat.st_mtime_ns]
    progress = read_progress(work)
    if progress.get("corpus") not in (None, corpus_stamp):  # the corpus changed since: start over
        log.warning("job %s: %s changed since the interrupted run; embedding it all again", job.id, job.corpus)
        shutil.rmtree(work)
        progress = read_progress(work)
    progress["corpus"] = corpus_stamp
    work.mkdir(parents=True, exist_ok=True)
    done = int(progress["chunks_done"])
    run: dict[str, Any] = {"pid": os.getpid(), "started_at": time.time(), "chunks": []}
    progress["runs"].append(run)
    if done:
        log.info("job %s: resuming after %d finished chunks (%d blocks)", job.id, done, progress["blocks"])
    blocks = split_blocks(read_corpus(job.corpus), model.block.tokenizer, model.block_max_tokens)
    i, chunk = 0, []
    t0 = time.perf_counter()

    def finish(i: int, chunk: list[Block]) -> None:
        emb_path, blocks_path = _chunk_paths(work, i)
        xb = embed_texts(model.block, [block_embedding_text(b) for b in chunk], opts.batch_size, device).numpy()
        tmp = emb_path.with_name("." + emb_path.name)
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(xb, dtype=np.float32))
        os.replace(tmp, emb_path)
        tmp = blocks_path.with_name("." + blocks_path.name)
        with BlockStoreWriter(tmp) as w:
            for b in chunk:
                w.add(b.id, b.title, b.text)
        os.replace(tmp, blocks_path)
        progress["chunks_done"] = i + 1
        progress["blocks"] += len(chunk)
        run["chunks"].append(i)
        _write_atomic(work / "progress.json", json.dumps(progress))
        rate = progress["blocks"] / max(time.perf_counter() - t0, 1e-9)
        log.info("job %s: chunk %d embedded (%d blocks so far, %.0f blocks/s)", job.id, i, progress["blocks"], rate)
        if opts.chunk_pause_s:
            time.sleep(opts.chunk_pause_s)

    for b in blocks:
        chunk.append(b)
        if len(chunk) >= opts.chunk_blocks:
            if i >= done:
                finish(i, chunk)
            i, chunk = i + 1, []
    if chunk and i >= done:
        finish(i, chunk)
        i += 1
    elif chunk:
        i += 1
    _write_atomic(work / "progress.json", json.dumps(progress))
    if progress["blocks"] == 0:
        raise ValueError(f"corpus {job.corpus} has no blocks")
    return progress


def chunk_files(work: Path, n: int) -> list[tuple[Path, Path]]:
    return [_chunk_paths(work, i) for i in range(n)]


def _sample_rows(embs: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows drawn without replacement across the memory-mapped chunks (all when fewer)."""
    sizes = np.array([len(x) for x in embs])
    total = int(sizes.sum())
    rows = np.sort(rng.choice(total, size=min(n, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = []
    for x, s, size in zip(embs, starts, sizes):
        sel = rows[(rows >= s) & (rows < s + size)] - s
        if len(sel):
            out.append(np.asarray(x[sel]))
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def exact_search(embs: list[np.ndarray], xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact MIPS of ``xq`` over chunks streamed one at a time (memory: one chunk + the result heap)."""
    rh = faiss.ResultHeap(len(xq), k, keep_max=True)
    offset = 0
    for x in embs:
        flat = faiss.IndexFlatIP(xq.shape[1])
        flat.add(np.ascontiguousarray(x, dtype=np.float32))
        D, I = flat.search(xq, min(k, len(x)))
        if D.shape[1] < k:  # pad a short chunk
            D = np.pad(D, ((0, 0), (0, k - D.shape[1])), constant_values=-np.inf)
            I = np.pad(I, ((0, 0), (0, k - I.shape[1])), constant_values=-1)
        rh.add_result(D, np.where(I >= 0, I + offset, -1))
        offset += len(x)
    rh.finalize()
    return rh.D, rh.I


def build_faiss_index(emb_files: list[Path], factory: str, opts: WorkerOptions,
                      seed: int = 0) -> tuple[faiss.Index, dict[str, Any]]:
    """The index of ``factory`` over float32 ``.npy`` chunks read through memory maps, and the manifest's
    ``extra``: for approximate kinds, recall@k against exact search on ``recall_queries`` sampled rows."""
    embs = [np.load(p, mmap_mode="r") for p in emb_files]
    d = embs[0].shape[1]
    index = new_index(d, factory)
    rng = np.random.default_rng(seed)
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    if needs_training(d, factory):
        xt = _sample_rows(embs, opts.train_sample, rng)
        log.info("training %s on %d block embeddings", factory, len(xt))
        index.train(xt)
        extra["train_rows"] = len(xt)
    for x in embs:
        index.add(np.ascontiguousarray(x, dtype=np.float32))
    extra["build_s"] = round(time.perf_counter() - t0, 3)
    if factory.strip() != "Flat":
        xq = _sample_rows(embs, opts.recall_queries, rng)
        k = min(opts.recall_k, index.ntotal)
        _, Ie = exact_search(embs, xq, k)
        params = set_search_params(index, opts.nprobe, opts.ef_search)
        _, Ia = index.search(xq, k)
        extra.update(recall_at_k=round(recall_at_k(Ia, Ie), 4), recall_k=k, recall_queries=len(xq),
                     recall_search_params=params)
        log.info("%s: recall@%d = %.3f against exact (%s)", factory, k, extra["recall_at_k"], params)
    return index, extra


def smoke_search(index: faiss.Index, emb_file: Path) -> None:
    """Search the first block's own embedding: the index must return a block for it.

    Raises:
        ValueError: the index returns nothing.
    """
    xq = np.ascontiguousarray(np.load(emb_file, mmap_mode="r")[:1], dtype=np.float32)
    _, I = index.search(xq, 1)
    if I[0, 0] < 0:
        raise ValueError("smoke search returned no block")


def run_job(home: Path, job: BuildJob, opts: WorkerOptions) -> Manifest:
    """Build, validate and publish the version of one job (resuming its work directory), then notify."""
    home = Path(home)
    model = _load_model(home, job.model)
    work = job_work_dir(home, job)
    published = read_progress(work).get("published")
    if published is not None:  # killed after publishing: do not publish twice
        m = Manifest.read(version_files(home / "indexes" / job.index / str(published)).manifest)
    else:
        m = _build_and_publish(home, job, model, work, opts)
    shutil.rmtree(work, ignore_errors=True)
    if opts.service_url:
        notify_service(opts.service_url, opts.admin_token, m.name, m.version)
    return m


def _build_and_publish(home: Path, job: BuildJob, model: Any, work: Path, opts: WorkerOptions) -> Manifest:
    progress = embed_chunks(model, job, work, opts)
    chunks = chunk_files(work, int(progress["chunks_done"]))
    index, extra = build_faiss_index([e for e, _ in chunks], job.factory, opts)
    extra.update(chunks=len(chunks), embedding_runs=progress["runs"])  # which run embedded which chunks
    smoke_search(index, chunks[0][0])
    staging = staging_dir(home / "indexes", job.index)
    files = version_files(staging)
    try:
        with BlockStoreWriter(files.blocks) as store:
            for _, bp in chunks:
                with pa.memory_map(str(bp), "r") as src:
                    store.add_table(pa.ipc.open_file(src).read_all())
            count = store.count
        faiss.write_index(index, str(files.faiss_index))
        m = publish(staging, dict(
            name=job.index, embedder=model.ref, dim=index.d, count=count, metric="inner_product",
            factory=job.factory, block_max_tokens=model.block_max_tokens, corpus=Path(job.corpus).name,
            extra=extra))
    except BaseException:
        remove_staging(staging)
        raise
    progress["published"] = m.version
    _write_atomic(work / "progress.json", json.dumps(progress))
    log.info("job %s: published index %s/%d (%d blocks, %s)", job.id, m.name, m.version, count, job.factory)
    return m


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
    """Runs jobs one at a time until :meth:`stop`; jobs left in ``jobs/running/`` by a killed worker first."""

    def __init__(self, home: Path, opts: WorkerOptions | None = None) -> None:
        self.home, self.opts = Path(home), opts or WorkerOptions()
        self._stop = threading.Event()
        for state in JOB_STATES:
            (jobs_dir(self.home) / state).mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> bool:
        """Run one job (an interrupted one first); False when there was none."""
        running = sorted((jobs_dir(self.home) / "running").glob("*.json"))
        path = running[0] if running else claim_next(self.home)
        if path is None:
            return False
        job = BuildJob.read(path)
        log.info("job %s: building index %s from %s with %s (%s)", job.id, job.index, job.corpus, job.model,
                 job.factory)
        result: dict[str, Any] = asdict(job)
        try:
            m = run_job(self.home, job, self.opts)
            result.update(version=m.version, extra=m.extra)
            state = "done"
        except Exception as e:  # a failed job is filed with its reason; the worker goes on
            log.exception("job %s failed", job.id)
            result["error"] = f"{type(e).__name__}: {e}"
            state = "failed"
            shutil.rmtree(job_work_dir(self.home, job), ignore_errors=True)
        _write_atomic(jobs_dir(self.home) / state / path.name, json.dumps(result))
        path.unlink()
        return True

    def run_forever(self) -> None:
        while not self._stop.is_set():
            if not self.run_once():
                self._stop.wait(self.opts.poll_s)

