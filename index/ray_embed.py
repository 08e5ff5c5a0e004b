"""Block embeddings on a Ray cluster: the embedding step of an index build as Ray Data ``map_batches``.

:class:`RayExecutor` is the ``ray`` :class:`index.chunks.EmbedExecutor` (registered in
:data:`index.options.EXECUTORS`): for each chunk of the request it writes the chunk's ``emb-NNNNN.npy`` with
:func:`index.chunks.write_embeddings` and calls ``on_chunk``, both in the build process (the Ray *driver*),
exactly as the local executor does, so progress, ``realmqa_index_build_blocks``, resume and the published
version are the same as a local build's.

How: the driver reads the chunks' texts (:func:`index.chunks.chunk_texts`) ``window_chunks`` at a time (the
next window while the current one is embedded); each window is one Ray Data run, each chunk one Arrow table
(``chunk``, ``text``) and so one Ray Data block. ``map_batches`` runs them through an ``ActorPoolStrategy``
pool of embedder actors with ``batch_size`` = the chunk size, so a batch is a chunk (rows are regrouped by
``chunk`` anyway, so a split batch or any completion order is fine). Each actor holds the model's block
embedder, shipped through Ray's object store (the Ray workers need the realmqa package, not the home), and
takes one GPU (``num_gpus=1``) where the cluster has GPUs.

Which cluster (:class:`RayOptions` ``address``): None follows Ray's own rule (``RAY_ADDRESS``, else a Ray
started on this machine with ``ray start``, else a new local Ray with the machine's cores); ``"local"`` always
starts a local Ray. A Ray this executor started is shut down when its ``embed`` ends.

Ray is optional (``pip install 'realmqa[ray]'``) and imported only here, lazily: without it building a
:class:`RayExecutor` raises :class:`RayNotInstalled`, which says what to install.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa

from index.chunks import Chunk, EmbedRequest, chunk_texts, write_embeddings
from realm_core.model_dir import EmbedderFiles, embed_texts

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'realmqa[ray]'"


class RayNotInstalled(ImportError):
    """The ray executor chosen without Ray Data installed (an ImportError, as :func:`index.chunks.make_executor`
    documents for a missing optional dependency)."""


def import_ray() -> Any:
    """The ``ray`` module with ``ray.data`` loaded.

    Raises:
        RayNotInstalled: ray or ray.data cannot be imported; the message names the extra to install.
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayNotInstalled(f"the ray executor needs Ray Data, which is not installed ({e}); "
                              f"install it with: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: RAY_ADDRESS, else a running local Ray, else a new one; "local": a new one
    actors: int | None = None  # embedder actors; None: one per GPU of the cluster, else CPUs // cpus_per_actor
    cpus_per_actor: float = 1.0  # also the actor's torch threads
    window_chunks: int | None = None  # chunks per Ray Data run (bounds the driver's memory); None: 32 per actor
    local_cpus: int | None = None  # CPUs of a Ray this executor starts (None: the machine's cores)


class BlockEmbedderActor:
    """One embedder actor of the pool: ``__call__`` maps a batch ``{"chunk": (rows,), "text": (rows,)}`` to
    ``{"chunk": (rows,), "emb": (rows, dim) float32}`` with :func:`realm_core.model_dir.embed_texts`."""

    def __init__(self, block_ref: Any, batch_size: int, threads: int) -> None:
        import ray
        import torch

        torch.set_num_threads(max(1, threads))
        self.block: EmbedderFiles = ray.get(block_ref[0])  # put once by the driver, shared by every run
        self.batch_size = batch_size
        self.device = torch.device("cuda") if torch.cuda.is_available() else None
        if self.device is not None:
            self.block.embedder.to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        xb = embed_texts(self.block, texts, self.batch_size, self.device).numpy()
        return {"chunk": np.asarray(batch["chunk"]), "emb": np.ascontiguousarray(xb, dtype=np.float32)}


class RayExecutor:
    """The ``ray`` embedding executor (see the module docstring).

    Args:
        device: the caller's torch device; not used: each actor embeds on its GPU where the cluster has GPUs.
        options: cluster, pool size and run size (:class:`RayOptions`).
        model: a loaded model whose block embedder embeds (None: loaded from each request's ``model_root``).

    Raises:
        RayNotInstalled: Ray Data is not installed.
    """

    def __init__(self, device: str | None = None, options: RayOptions | None = None, model: Any = None) -> None:
        self.ray = import_ray()
        self.options, self.model = options or RayOptions(), model
        self._started = False  # this executor started the Ray runtime (and shuts it down)

    def embed(self, request: EmbedRequest, on_chunk: Callable[[Chunk], None]) -> None:
        """Write every chunk's embeddings of ``request`` (computed on Ray), ``on_chunk`` after each (here).

        Raises:
            RuntimeError: Ray failed (an actor died, the cluster went away): the build stops; a resumed build
                embeds only the chunks without an embeddings file.
        """
        model = self.model
        if model is None:
            from realm_core.model_dir import load_model_dir

            name, _, v = request.model_ref.partition("/")
            model = load_model_dir(request.model_root, name, int(v))
        by_number = {c.number: c for c in request.chunks}
        texts = ((c.number, chunk_texts(c)) for c in request.chunks)
        try:
            for number, xb in self.embed_chunks(model.block, request.batch_size, texts):
                write_embeddings(by_number[number], xb)
                on_chunk(by_number[number])
        finally:
            self.close()

    def connect(self) -> None:
        """Join or start Ray (:meth:`embed_chunks` does it on first use); idempotent."""
        ray = self.ray
        if ray.is_initialized():
            return
        o = self.options
        if o.address == "local" or (o.address is None and o.local_cpus):
            cpus = o.local_cpus or os.cpu_count() or 1
            log.info("starting a local Ray with %d CPUs", cpus)
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        else:
            log.info("joining Ray at %s", o.address or "RAY_ADDRESS (or a new local Ray)")
            ray.init(address=o.address, log_to_driver=False)
        self._started = True

    def pool(self) -> tuple[int, float]:
        """(actors, GPUs per actor) on the connected cluster: a GPU per actor where the cluster has GPUs."""
        res = self.ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        if self.options.actors:
            return self.options.actors, (1.0 if gpus else 0.0)
        if gpus:
            return gpus, 1.0
        return max(1, int(res.get("CPU", 1) // self.options.cpus_per_actor)), 0.0

    def embed_chunks(self, block: EmbedderFiles, batch_size: int,
                     chunks: Iterable[tuple[int, list[str]]]) -> Iterator[tuple[int, np.ndarray]]:
        """``(chunk, xb)`` for each ``(chunk, texts)`` of ``chunks`` as they are done (any order), ``xb`` the
        (len(texts), dim) float32 block embeddings by ``block`` in batches of ``batch_size`` texts.

        Raises:
            RuntimeError: Ray failed, or gave back rows for no or too many blocks of a chunk.
        """
        self.connect()
        ray = self.ray
        actors, gpus = self.pool()
        window = self.options.window_chunks or 32 * actors
        block_ref = ray.put(block)
        log.info("embedding on Ray: %d actors (%s GPU each), %d chunks per run", actors, gpus, window)
        it = iter(chunks)
        with ThreadPoolExecutor(1, thread_name_prefix="ray-embed-read") as reader:
            nxt = reader.submit(lambda: list(islice(it, window)))
            while batch := nxt.result():
                nxt = reader.submit(lambda: list(islice(it, window)))  # the next run's chunks, read meanwhile
                yield from self._run(batch, block_ref, batch_size, actors, gpus)

    def _run(self, batch: list[tuple[int, list[str]]], block_ref: Any, batch_size: int, actors: int,
             gpus: float) -> Iterator[tuple[int, np.ndarray]]:
        ray = self.ray
        ray.data.DataContext.get_current().enable_progress_bars = False
        tables = [pa.table({"chunk": np.full(len(texts), i, dtype=np.int64), "text": texts}) for i, texts in batch]
        ds = ray.data.from_arrow(tables).map_batches(
            BlockEmbedderActor, batch_size=max(len(texts) for _, texts in batch), batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(batch))),
            fn_constructor_args=([block_ref], batch_size, max(1, int(self.options.cpus_per_actor))),
            num_cpus=self.options.cpus_per_actor, num_gpus=gpus)
        want = {i: len(texts) for i, texts in batch}
        parts: dict[int, list[np.ndarray]] = {}
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ids, emb = np.asarray(out["chunk"]), np.asarray(out["emb"], dtype=np.float32)
            for i in dict.fromkeys(ids.tolist()):  # a batch is one chunk; regroup anyway (row order is kept)
                got = parts.setdefault(i, [])
                got.append(emb[ids == i])
                n = sum(len(x) for x in got)
                if i not in want or n > want[i]:
                    raise RuntimeError(f"Ray gave back {n} block embeddings for chunk {i}, not {want.get(i, 0)}")
                if n == want[i]:
                    yield i, np.concatenate(parts.pop(i))
                    del want[i]
        if want:
            raise RuntimeError(f"Ray gave back no block embeddings for chunks {sorted(want)}")

    def close(self) -> None:
        """Shut down the Ray runtime if this executor started it (a connected cluster keeps running)."""
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False
