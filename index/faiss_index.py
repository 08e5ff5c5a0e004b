"""FAISS index construction and search (maximum inner-product search, MIPS).

faiss names, used throughout ``index/``: ``xb`` (n, d) float32 block embeddings added to the index,
``xq`` (nq, d) float32 query embeddings, ``k`` results per query, ``D`` (nq, k) relevance scores
(inner products), ``I`` (nq, k) int64 block rows (-1 where fewer than k exist).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)


def new_index(d: int, factory: str = "Flat") -> faiss.Index:
    """An empty inner-product index from a faiss ``index_factory`` string ("Flat" is exact MIPS).

    Raises:
        ValueError: faiss does not understand ``factory``.
    """
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"bad faiss factory string {factory!r}: {str(e).splitlines()[0]}") from None
    ivf = faiss.try_extract_index_ivf(index)
    ivfpq = faiss.downcast_index(ivf) if ivf is not None else None
    if hasattr(ivfpq, "do_polysemous_training"):
        # IVF-PQ trains polysemous codes by default: slow, and unused unless polysemous_ht is set
        setattr(ivfpq, "do_polysemous_training", False)  # noqa: B010 (faiss' stubs lack the attribute)
    return index


def search(index: faiss.Index, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` blocks per query, best first: ``D`` (nq, k) float32 scores, ``I`` (nq, k) int64 rows."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    k = min(k, index.ntotal)
    D, I = index.search(xq, k)
    return D, I


def needs_training(d: int, factory: str) -> bool:
    """Whether a ``d``-dimensional index of this factory string must be trained before adding (IVF, PQ)."""
    return not new_index(d, factory).is_trained


def set_search_params(index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None) -> str:
    """Apply ``nprobe`` (IVF kinds) and ``efSearch`` (HNSW) where the index has them; returns what was set
    as a faiss ParameterSpace string ("" when nothing applies, e.g. a Flat index)."""
    ivf = faiss.try_extract_index_ivf(index)
    parts = []
    if nprobe is not None and ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
        parts.append(f"nprobe={ivf.nprobe}")
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if ef_search is not None and hnsw is not None:
        hnsw.efSearch = ef_search
        parts.append(f"efSearch={ef_search}")
    return ",".join(parts)


def recall_at_k(I: np.ndarray, I_exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k rows (``I_exact`` (nq, k)) found in its approximate top-k ``I``."""
    nq, k = I_exact.shape
    hits = sum(len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) for a, e in zip(I, I_exact))
    return hits / (nq * k)


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU (never touches GPU symbols otherwise)."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return get_num_gpus is not None and hasattr(faiss, "StandardGpuResources") and get_num_gpus() > 0


def to_searcher(index: faiss.Index) -> tuple[faiss.Index, object | None]:
    """The index to search with: a GPU copy with its own ``StandardGpuResources`` when :func:`gpu_available`,
    else ``index`` itself. FAISS GPU indexes are not thread-safe even for search, so each copy (and its
    resources) must be used by one thread at a time; :class:`service.engine.QAEngine` holds a lock per batch.
    Returns (index, resources or None); keep the resources alive as long as the index."""
    if not gpu_available():
        return index, None
    res = faiss.StandardGpuResources()  # GPU-only symbol, reached only when gpu_available()
    try:
        return faiss.index_cpu_to_gpu(res, 0, index), res
    except RuntimeError as e:  # a kind with no GPU version (HNSW) stays on the CPU
        log.warning("index stays on the CPU: %s", str(e).splitlines()[0])
        return index, None
