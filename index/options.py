"""Options of index builds, searches and the index worker: plain frozen dataclasses whose defaults are the
only ones (``service.settings`` takes its defaults from these and builds them by keyword). Importing this
module imports neither faiss nor numpy nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PUBLISH_TRIES = 8  # version numbers a publish tries before it gives up

# Embedding executors by name ("module:Class", imported when chosen, so an optional one costs nothing until
# used); each class is built as Class(device=...). `index/ray_embed.py` provides "ray".
EXECUTORS: dict[str, str] = {"local": "index.chunks:LocalExecutor", "ray": "index.ray_embed:RayExecutor"}


@dataclass(frozen=True)
class SearchParams:
    """Search parameters of approximate kinds, applied to an index version when it is opened."""

    nprobe: int = 16  # inverted lists an IVF index searches
    ef_search: int = 64  # HNSW search beam (efSearch)


@dataclass(frozen=True)
class BuildOptions:
    """How an index is built (:func:`index.pipeline.build_and_publish`)."""

    factory: str = "Flat"  # faiss index_factory string
    chunk_blocks: int = 4096  # blocks per resumable chunk
    batch_size: int = 64  # texts per embedding forward pass
    train_sample: int = 262144  # most block embeddings an IVF/PQ index is trained on
    recall_queries: int = 200  # sampled block embeddings used as queries for recall@k
    recall_k: int = 10
    search: SearchParams = SearchParams()  # what recall is measured with
    chunk_pause_s: float = 0.0  # sleep after each embedded chunk (throttling on a shared machine; tests)
    publish_tries: int = PUBLISH_TRIES
    parts: tuple[str, ...] = ()  # extra parts of the version: names in index.pipeline.PART_BUILDERS
    progress_bar: bool = False

    def check(self, dim: int = 768) -> None:
        """Raises: ValueError: a bad factory string (tried at ``dim``: divisible by the usual PQ sub-quantizer
        counts), an unknown part, or a size that is not positive."""
        from index.faiss_index import new_index
        from index.pipeline import PART_BUILDERS

        new_index(dim, self.factory)
        unknown = [p for p in self.parts if p not in PART_BUILDERS]
        if unknown:
            raise ValueError(f"unknown index parts {unknown}; known: {sorted(PART_BUILDERS)}")
        if min(self.chunk_blocks, self.batch_size, self.publish_tries) < 1:
            raise ValueError("chunk_blocks, batch_size and publish_tries must be positive")


@dataclass(frozen=True)
class WorkerOptions:
    """The index worker's options (:class:`index.worker.IndexWorker`)."""

    build: BuildOptions = field(default_factory=BuildOptions)  # its factory is replaced by each job's
    poll_s: float = 1.0  # how often the jobs directory is looked at, s
    max_attempts: int = 3  # claims of one job (its workers dying) before it is filed as failed
    device: str | None = None  # torch device the local executor embeds on (None: the CPU)
    executor: str = "local"  # the executor of jobs that name none (one of EXECUTORS)
    service_url: str | None = None  # POST .../activate there after publishing (with admin_token)
    admin_token: str | None = None
