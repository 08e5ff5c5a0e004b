"""Fusion rules on hand-made lists (index.fusion): values from the formulas worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from index.fusion import FusionConfig, fuse, normalised_sum, rrf

DENSE_D = np.array([[0.9, 0.5, 0.1]], dtype=np.float32)
DENSE_I = np.array([[3, 1, 2]])
BM25_S = np.array([[10.0, 4.0, 0.0]], dtype=np.float32)
BM25_I = np.array([[1, 4, -1]])


def test_rrf_by_hand() -> None:
    F, I = rrf((DENSE_I, BM25_I), (0.5, 0.5), k=5, rrf_k=60)
    assert I.tolist() == [[1, 3, 4, 2, -1]]
    expected = [0.5 / 62 + 0.5 / 61, 0.5 / 61, 0.5 / 62, 0.5 / 63]
    np.testing.assert_allclose(F[0, :4], expected, rtol=1e-6)
    assert F[0, 4] == -np.inf


def test_normalised_sum_by_hand() -> None:
    F, I = normalised_sum((DENSE_D, BM25_S), (DENSE_I, BM25_I), (0.7, 0.3), k=4)
    # dense normalised: 3 → 1, 1 → 0.5, 2 → 0; BM25: 1 → 1, 4 → 0 (row -1 is padding, not a block)
    np.testing.assert_allclose(F[0], [0.7, 0.7 * 0.5 + 0.3, 0.0, 0.0], rtol=1e-6)
    assert I[0, :2].tolist() == [3, 1]
    assert I[0, 2:].tolist() == [4, 2]  # a tie at 0: row 4 was 2nd in a list, row 2 only 3rd


def test_weight_one_keeps_the_dense_order() -> None:
    rng = np.random.default_rng(0)
    I_dense = np.stack([rng.permutation(50)[:20] for _ in range(8)])
    D_dense = -np.sort(-rng.random((8, 20)), axis=1).astype(np.float32)
    I_bm25 = np.stack([rng.permutation(50)[:20] for _ in range(8)])
    S_bm25 = -np.sort(-rng.random((8, 20)) * 20, axis=1).astype(np.float32)
    for rule in ("rrf", "normalised_sum"):
        _, I = fuse(FusionConfig(rule=rule, weight=1.0), (D_dense, I_dense), (S_bm25, I_bm25), k=10)
        assert (I == I_dense[:, :10]).all(), rule
        _, I = fuse(FusionConfig(rule=rule, weight=0.0), (D_dense, I_dense), (S_bm25, I_bm25), k=10)
        assert (I == I_bm25[:, :10]).all(), rule


def test_constant_scores_and_empty_lists() -> None:
    F, I = normalised_sum((np.array([[2.0, 2.0]]), np.zeros((1, 2))), (np.array([[5, 6]]), np.full((1, 2), -1)),
                          (0.5, 0.5), k=3)
    np.testing.assert_allclose(F[0, :2], [0.5, 0.5])
    assert I.tolist() == [[5, 6, -1]]


@pytest.mark.parametrize("kw", [dict(rule="max"), dict(weight=1.5), dict(depth=0)])
def test_bad_config_names_the_field(kw: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kw)).replace("rule", "fusion rule")):
        FusionConfig(**kw)


def test_lists_must_agree() -> None:
    with pytest.raises(ValueError, match="one weight per list"):
        rrf((DENSE_I,), (0.5, 0.5), k=2)
    with pytest.raises(ValueError, match="same n_queries"):
        rrf((DENSE_I, np.zeros((2, 3), dtype=np.int64)), (0.5, 0.5), k=2)
