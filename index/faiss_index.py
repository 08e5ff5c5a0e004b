"""FAISS index construction and search (maximum inner-product search, MIPS).

faiss names, used throughout ``index/``: ``xb`` (n, d) float32 block embeddings added to the index,
``xq`` (nq, d) float32 query embeddings, ``k`` results per query, ``D`` (nq, k) relevance scores
(inner products), ``I`` (nq, k) int64 block rows (-1 where fewer than k exist).
"""

from __future__ import annotations

import faiss
import numpy as np


def new_index(d: int, factory: str = "Flat") -> faiss.Index:
    """An empty inner-product index from a faiss ``index_factory`` string ("Flat" is exact MIPS).

    Raises:
        ValueError: faiss does not understand ``factory``.
    """
    try:
        return faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"bad faiss factory string {factory!r}: {str(e).splitlines()[0]}") from None


def search(index: faiss.Index, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` blocks per query, best first: ``D`` (nq, k) float32 scores, ``I`` (nq, k) int64 rows."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    k = min(k, index.ntotal)
    D, I = index.search(xq, k)
    return D, I
