"""FAISS index construction and search (maximum inner-product search, MIPS).

faiss names, used throughout ``index/``: ``xb`` (n, d) float32 block embeddings added to the index,
``xq`` (nq, d) float32 query embeddings, ``k`` results per query, ``D`` (nq, k) relevance scores
(inner products), ``I`` (nq, k) int64 block rows (-1 where fewer than k exist).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from index.options import SearchParams

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


def search_first_rows(index: faiss.Index, xq: np.ndarray, k: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` restricted to rows ``[0, rows)`` where the kind scans every stored code (Flat, SQ: an
    ``IndexFlatCodes``, through ``faiss.IDSelectorRange``), so that only those rows' pages are read; other kinds
    (IVF, HNSW: a search reads a few lists or graph nodes anyway; a kind that takes no selector, e.g. PQ; a GPU
    copy) search in full."""
    if isinstance(faiss.downcast_index(index), faiss.IndexFlatCodes):
        try:
            sel = faiss.IDSelectorRange(0, min(rows, index.ntotal))
            params = faiss.SearchParameters()
            params.sel = sel  # the local keeps the selector alive through the search
            return index.search(np.ascontiguousarray(xq, dtype=np.float32), min(k, rows, index.ntotal),
                                params=params)
        except RuntimeError:  # this kind's search takes no selector
            pass
    return search(index, xq, k)


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


def sample_rows(xbs: Sequence[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows drawn without replacement across the (memory-mapped) chunks ``xbs`` (all rows when fewer),
    as one contiguous float32 (n, d) array."""
    sizes = np.array([len(x) for x in xbs])
    total = int(sizes.sum())
    rows = np.sort(rng.choice(total, size=min(n, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = []
    for x, s, size in zip(xbs, starts, sizes):
        sel = rows[(rows >= s) & (rows < s + size)] - s
        if len(sel):
            out.append(np.asarray(x[sel]))
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def exact_search(xbs: Sequence[np.ndarray], xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact MIPS of ``xq`` over chunks streamed one at a time (memory: one chunk + the result heap)."""
    rh = faiss.ResultHeap(len(xq), k, keep_max=True)
    offset = 0
    for x in xbs:
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


def build_index(xbs: Sequence[np.ndarray], factory: str, train_sample: int = 262144, params: SearchParams | None = None,
                recall_queries: int = 200, recall_k: int = 10, seed: int = 0) -> tuple[faiss.Index, dict[str, Any]]:
    """The index of ``factory`` over the chunks ``xbs`` ((rows, d) float32, e.g. memory-mapped ``.npy``), added
    one chunk at a time; kinds that need training (IVF, PQ) are trained on ``train_sample`` sampled rows.

    Returns the index and what the manifest's ``extra`` records: ``train_rows``, ``build_s`` and, for
    approximate kinds (anything but ``Flat``), ``recall_at_k`` of ``recall_queries`` sampled stored rows as
    queries against :func:`exact_search`, with ``recall_k`` and the ``recall_search_params`` used.

    Raises:
        ValueError: a bad factory string, or no rows.
    """
    if not xbs or sum(len(x) for x in xbs) == 0:
        raise ValueError("no block embeddings to index")
    d = xbs[0].shape[1]
    index = new_index(d, factory)
    rng = np.random.default_rng(seed)
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    if not index.is_trained:
        xt = sample_rows(xbs, train_sample, rng)
        log.info("training %s on %d block embeddings", factory, len(xt))
        index.train(xt)
        extra["train_rows"] = len(xt)
    for x in xbs:
        index.add(np.ascontiguousarray(x, dtype=np.float32))
    extra["build_s"] = round(time.perf_counter() - t0, 3)
    if factory.strip() != "Flat":
        xq = sample_rows(xbs, recall_queries, rng)
        k = min(recall_k, index.ntotal)
        _, Ie = exact_search(xbs, xq, k)
        params = params or SearchParams()
        used = set_search_params(index, params.nprobe, params.ef_search)
        _, Ia = index.search(xq, k)
        extra.update(recall_at_k=round(recall_at_k(Ia, Ie), 4), recall_k=k, recall_queries=len(xq),
                     recall_search_params=used)
        log.info("%s: recall@%d = %.3f against exact (%s)", factory, k, extra["recall_at_k"], used)
    return index, extra
