"""Fusion of ranked lists (dense MIPS and BM25) into one ranking, on plain faiss-style arrays.

Each input list is ``I`` (n_queries, depth) int64 rows, best first, ``-1`` padding the end, with its
scores ``D`` (n_queries, depth). The fused output is ``F`` (n_queries, k) float32 fused scores and ``I``
(n_queries, k) int64 rows, best first, ``-1`` (score ``-inf``) past the union of the lists. Ties are broken
by the row's best position in the inputs, then by row number, so fusion is deterministic.

Rules (``FusionConfig.rule``):

- ``rrf`` — reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009):
  ``F(d) = Σ_m w_m / (rrf_k + rank_m(d))``, ``rank_m`` 1-based in list ``m``, a row absent from list ``m``
  adds nothing; scores are ignored.
- ``normalised_sum`` — a convex combination of min-max normalised scores (Bruch, Gai & Ingber, "An
  Analysis of Fusion Functions for Hybrid Retrieval", TOIS 2023):
  ``F(d) = Σ_m w_m · (D_m(d) - min_m) / (max_m - min_m)``, ``min_m``/``max_m`` over the query's list
  ``m`` (its top ``depth``); a row absent from list ``m`` counts as ``min_m`` (adds 0); a list whose scores
  are all equal normalises to 1 for every row in it.

In hybrid retrieval list 0 is dense and list 1 is BM25, with weights ``(weight, 1 - weight)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RULES = ("rrf", "normalised_sum")


@dataclass(frozen=True)
class FusionConfig:
    """How an index version fuses its dense and BM25 lists (stored in its manifest)."""

    # The default, normalised sum with equal weights, was chosen by recall@5 on 2,000 SQuAD v1.1 train
    # questions outside the bundled held-out articles (bench/README.md, "Hybrid retrieval").
    rule: str = "normalised_sum"  # one of RULES
    weight: float = 0.5  # weight of the dense list; BM25 gets 1 - weight
    depth: int = 100  # rows taken from each list before fusing (at least the k asked for)
    rrf_k: float = 60.0  # RRF's rank offset (the paper's k = 60)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"fusion rule {self.rule!r} is not one of {list(RULES)}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"fusion weight must be in [0, 1], got {self.weight}")
        if self.depth < 1 or self.rrf_k < 0:
            raise ValueError(f"fusion depth must be ≥ 1 and rrf_k ≥ 0, got {self.depth} and {self.rrf_k}")


def _check(lists: Sequence[np.ndarray], weights: Sequence[float]) -> int:
    if not lists or len(lists) != len(weights):
        raise ValueError(f"{len(lists)} lists and {len(weights)} weights: one weight per list, at least one list")
    n = lists[0].shape[0]
    if any(x.ndim != 2 or x.shape[0] != n for x in lists):
        raise ValueError("every list must be (n_queries, depth) with the same n_queries")
    return n


def _top(acc: dict[int, float], first: dict[int, int], k: int) -> tuple[np.ndarray, np.ndarray]:
    order = sorted(acc, key=lambda r: (-acc[r], first[r], r))[:k]
    F = np.full(k, -np.inf, dtype=np.float32)
    I = np.full(k, -1, dtype=np.int64)
    F[:len(order)] = [acc[r] for r in order]
    I[:len(order)] = order
    return F, I


def rrf(I_lists: Sequence[np.ndarray], weights: Sequence[float], k: int,
        rrf_k: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion (see the module docstring) of ``I_lists``, each (n_queries, depth_m).

    Returns ``F`` (n_queries, k) float32 and ``I`` (n_queries, k) int64.
    Raises:
        ValueError: lists of different n_queries, or not one weight per list.
    """
    n = _check(I_lists, weights)
    F = np.full((n, k), -np.inf, dtype=np.float32)
    I = np.full((n, k), -1, dtype=np.int64)
    for q in range(n):
        acc: dict[int, float] = {}
        first: dict[int, int] = {}
        for Im, w in zip(I_lists, weights):
            for pos, r in enumerate(Im[q].tolist()):
                if r < 0:
                    continue
                acc[r] = acc.get(r, 0.0) + w / (rrf_k + pos + 1)
                first[r] = min(first.get(r, pos), pos)
        F[q], I[q] = _top(acc, first, k)
    return F, I


def normalised_sum(D_lists: Sequence[np.ndarray], I_lists: Sequence[np.ndarray], weights: Sequence[float],
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of min-max normalised scores (see the module docstring); ``D_lists[m]`` and
    ``I_lists[m]`` are (n_queries, depth_m).

    Returns ``F`` (n_queries, k) float32 and ``I`` (n_queries, k) int64.
    Raises:
        ValueError: lists of different shapes, or not one weight per list.
    """
    n = _check(I_lists, weights)
    _check(D_lists, weights)
    if any(D.shape != Im.shape for D, Im in zip(D_lists, I_lists)):
        raise ValueError("each list's scores D and rows I must have the same shape")
    F = np.full((n, k), -np.inf, dtype=np.float32)
    I = np.full((n, k), -1, dtype=np.int64)
    for q in range(n):
        acc: dict[int, float] = {}
        first: dict[int, int] = {}
        for Dm, Im, w in zip(D_lists, I_lists, weights):
            valid = Im[q] >= 0
            rows, scores = Im[q][valid].tolist(), Dm[q][valid].astype(np.float64)
            if not rows:
                continue
            lo, hi = float(scores.min()), float(scores.max())
            norm = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
            for pos, (r, s) in enumerate(zip(rows, norm.tolist())):
                acc[r] = acc.get(r, 0.0) + w * s
                first[r] = min(first.get(r, pos), pos)
        F[q], I[q] = _top(acc, first, k)
    return F, I


def fuse(config: FusionConfig, dense: tuple[np.ndarray, np.ndarray], sparse: tuple[np.ndarray, np.ndarray],
         k: int) -> tuple[np.ndarray, np.ndarray]:
    """Fuse a dense ``(D, I)`` and a BM25 ``(S, I)`` list by ``config``: ``F``, ``I`` (n_queries, k)."""
    weights = (config.weight, 1.0 - config.weight)
    if config.rule == "rrf":
        return rrf((dense[1], sparse[1]), weights, k, config.rrf_k)
    return normalised_sum((dense[0], sparse[0]), (dense[1], sparse[1]), weights, k)
