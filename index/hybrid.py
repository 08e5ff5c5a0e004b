"""Hybrid retrieval: dense MIPS and BM25 over the same blocks, fused (:mod:`index.fusion`).

Short names as in :mod:`index.faiss_index`: ``xq`` (n_queries, dim) query embeddings, ``k`` blocks wanted,
``D``/``I`` (n_queries, k) scores and rows. Each list is searched to ``depth = max(k, config.depth)``, the
two are fused by the index version's :class:`index.fusion.FusionConfig`, and the top ``k`` fused rows are
returned **with their relevance scores** (inner product of query and block embedding, REALM §3.4) and their
fused scores. Fusion decides which blocks are read and in which order; which of the two scores the reader
adds to its span scores is the model's choice (``model.json`` ``hybrid_relevance``,
:mod:`realm_core.model_dir`): the inner product (``"dense"``, the default and REALM's) or the fused score
(``"fused"``). A fused row that dense search did not return gets its inner product from the index's stored
vector (``reconstruct``: Flat, HNSW); where the index cannot give it back (IVF, PQ without a direct map) it
gets the lowest relevance score of that query's dense list, a bound it is known to lie under (approximate
indexes aside).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence

import faiss
import numpy as np

from index.bm25 import PART, BM25Index
from index.faiss_index import search
from index.fusion import FusionConfig, fuse
from index.home import Home
from index.version import IndexVersion, Manifest, open_version

log = logging.getLogger(__name__)


def open_bm25(iv: IndexVersion) -> tuple[BM25Index, FusionConfig] | None:
    """The BM25 part of a version and the fusion rule it is served with (its manifest's ``extra["fusion"]``,
    else :class:`index.fusion.FusionConfig`'s defaults), or None for a dense-only version.

    Raises:
        index.bm25.BM25Error: the manifest names a part that is missing or does not match the version.
        ValueError: the recorded fusion rule is malformed.
    """
    if PART not in iv.manifest.parts:
        return None
    part = BM25Index.open(iv.root / PART, count=iv.manifest.count)
    return part, FusionConfig(**iv.manifest.extra.get("fusion", {}))


def derive_hybrid_version(home: Home, name: str, version: int | None = None,
                          fusion: FusionConfig | None = None, chunk_blocks: int = 4096) -> Manifest:
    """``realmqa index add-bm25``: publish a new version of index ``name`` through the one build pipeline with
    the blocks and block embeddings of ``version`` (the newest when None) — read back from its FAISS index,
    not embedded again — and a BM25 part; ``extra`` records ``derived_from`` and the ``fusion`` rule.

    Raises:
        index.version.IndexVersionError: the source version does not open.
        LookupError: the model version that built it is not in the home.
        ValueError: its index kind cannot give its vectors back (IVF/PQ), or its model's block embedder is not
            the one that built it.
    """
    from index.chunks import ArrayExecutor
    from index.options import BuildOptions
    from index.pipeline import BuildRequest, build_and_publish

    src = open_version(home.indexes_dir, name, version)
    model = home.model_version(src.manifest.embedder)
    if src.manifest.embedder_id and src.manifest.embedder_id != model.embedder_id:
        raise ValueError(f"index {src.ref}: the block embedder of {model.ref} is not the one that built it")
    n = src.manifest.count
    try:
        src.index.reconstruct(0)
    except RuntimeError as e:
        raise ValueError(f"index {src.ref} ({src.manifest.factory}) cannot give its vectors back: {e}") from None

    def blocks() -> Iterator:  # type: ignore[type-arg]
        for start in range(0, n, chunk_blocks):
            yield from src.blocks.get(range(start, min(n, start + chunk_blocks)))

    def arrays() -> Iterator[np.ndarray]:
        for start in range(0, n, chunk_blocks):
            yield src.index.reconstruct_n(start, min(n, start + chunk_blocks) - start)

    fusion = fusion or FusionConfig()
    request = BuildRequest(name, model, blocks, src.manifest.corpus, source_stamp=["derived", src.ref],
                           extra={"derived_from": src.ref, "fusion": dataclasses.asdict(fusion)})
    options = BuildOptions(factory=src.manifest.factory, chunk_blocks=chunk_blocks, parts=(PART,))
    try:
        m = build_and_publish(home, request, options, ArrayExecutor(arrays()))
    finally:
        src.close()
    log.info("published index %s: %s with a BM25 part, nothing embedded again", m.ref, src.ref)
    return m


def relevance_scores(index: faiss.Index, xq: np.ndarray, I: np.ndarray, dense: tuple[np.ndarray, np.ndarray]
                     ) -> np.ndarray:
    """Inner products (n_queries, k) of ``xq`` with the blocks at rows ``I`` (n_queries, k); ``dense`` =
    ``(D, I)`` of the dense search supplies the ones it found (``-inf`` where ``I = -1``)."""
    D_dense, I_dense = dense
    out = np.full(I.shape, -np.inf, dtype=np.float32)
    for q in range(I.shape[0]):
        known = {int(r): float(d) for d, r in zip(D_dense[q], I_dense[q]) if r >= 0}
        missing = [int(r) for r in I[q] if r >= 0 and int(r) not in known]
        if missing:
            try:
                xb = index.reconstruct_batch(np.asarray(missing, dtype=np.int64))
                known.update(zip(missing, (xb @ xq[q]).tolist()))
            except RuntimeError:  # no stored vectors to give back (IVF/PQ without a direct map)
                floor = min(known.values(), default=0.0)
                known.update(dict.fromkeys(missing, floor))
        for j, r in enumerate(I[q].tolist()):
            if r >= 0:
                out[q, j] = known[r]
    return out


def hybrid_search(searcher: faiss.Index, index: faiss.Index, bm25: BM25Index, config: FusionConfig,
                  xq: np.ndarray, queries: Sequence[str], k: int, timings: dict[str, float]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` fused blocks of each query: ``D`` (n_queries, k) relevance scores, ``I`` rows, in fused order,
    and ``F`` (n_queries, k) their fused scores (:func:`index.fusion.fuse`; ``-inf`` where ``I`` is -1).

    ``searcher`` searches (the index or its GPU copy); ``index`` is the CPU index (stored vectors).
    Adds ``search_ms`` (dense), ``bm25_ms`` and ``fuse_ms`` (fusion and relevance scores) to ``timings``.
    """
    depth = max(k, config.depth)
    t0 = time.perf_counter()
    D, I = search(searcher, xq, depth)
    t1 = time.perf_counter()
    S, J = bm25.search(queries, depth)
    t2 = time.perf_counter()
    F, If = fuse(config, (D, I), (S, J), k)
    Df = relevance_scores(index, xq, If, (D, I))
    timings.update(search_ms=(t1 - t0) * 1e3, bm25_ms=(t2 - t1) * 1e3, fuse_ms=(time.perf_counter() - t2) * 1e3)
    return Df, If, F
