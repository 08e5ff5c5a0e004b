"""Hybrid index versions (index.hybrid): a BM25 part published with a version and opened again, the fused
engine retrieval with its relevance scores, and dense-only versions staying dense."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.bm25 import BM25Error, BM25Index
from index.chunks import block_embedding_text
from index.faiss_index import search
from index.fusion import FusionConfig, fuse
from index.home import Home
from index.hybrid import derive_hybrid_version, open_bm25, relevance_scores
from index.version import open_version
from realm_core.model_dir import embed_texts, load_model_dir
from realm_core.model_spec import ModelDirError
from service.engine import QAEngine
from tests.conftest import BUNDLED_MODEL, make_home

QUERIES = ["Which NFL team won Super Bowl 50?", "Venite Ad Me Omnes", "Grotto replica Lourdes"]


@pytest.fixture(scope="module")
def hybrid_home(small_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with index ``small`` v1 (dense, copied from small_home), v2 (= v1 + BM25, RRF 0.5) and v3
    (= v1 + BM25 with all the weight on the dense list)."""
    home = make_home(tmp_path_factory.mktemp("hybrid-home"))
    shutil.copytree(small_home / "indexes" / "small" / "1", home / "indexes" / "small" / "1")
    assert derive_hybrid_version(Home(home), "small", 1).version == 2
    assert derive_hybrid_version(Home(home), "small", 1, FusionConfig(weight=1.0), chunk_blocks=7).version == 3
    return home


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)


def test_bm25_part_round_trips_through_publish_and_open(hybrid_home: Path) -> None:
    """Opened from its published files, the part answers as one built in memory from the same blocks; the
    blocks and block embeddings are the source version's (read back, not embedded again), in chunks of any
    size; the part's files are hashed with the version."""
    v1, v2, v3 = (open_version(hybrid_home / "indexes", "small", v) for v in (1, 2, 3))
    assert open_bm25(v1) is None
    part, fusion = open_bm25(v2)  # type: ignore[misc]
    assert fusion == FusionConfig()
    assert v2.manifest.extra["derived_from"] == "small/1" and v2.manifest.embedder_id == v1.manifest.embedder_id
    assert v2.manifest.parts["bm25"]["blocks"] == v1.manifest.count
    assert {"bm25/realmqa-bm25.json", "bm25/data.csc.index.npy"} <= set(v2.manifest.checksums)
    for v in (v2, v3):
        assert v.blocks._table.column("id").to_pylist() == v1.blocks._table.column("id").to_pylist()
        n = v1.manifest.count
        np.testing.assert_array_equal(v.index.reconstruct_n(0, n), v1.index.reconstruct_n(0, n))
    memory = BM25Index.build([block_embedding_text(b) for b in v2.blocks.get(range(len(v2.blocks)))])
    S1, I1 = part.search(QUERIES, 10)
    S2, I2 = memory.search(QUERIES, 10)
    assert (I1 == I2).all() and (I1[:, 0] >= 0).all()
    np.testing.assert_array_equal(S1, S2)


def test_a_damaged_part_is_refused(hybrid_home: Path, tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    shutil.copytree(hybrid_home / "indexes" / "small" / "2", home / "indexes" / "small" / "2")
    iv = open_version(home / "indexes", "small", 2)
    (home / "indexes" / "small" / "2" / "bm25" / "params.index.json").unlink()
    with pytest.raises(BM25Error, match="missing"):
        open_bm25(iv)


def test_hybrid_engine_reads_fused_blocks_with_their_relevance_scores(hybrid_home: Path, model) -> None:  # type: ignore[no-untyped-def]
    dense = QAEngine(model, open_version(hybrid_home / "indexes", "small", 1))
    hybrid = QAEngine(model, open_version(hybrid_home / "indexes", "small", 2))
    xq = embed_texts(model.query, QUERIES).numpy()
    index = hybrid.index.index
    for q, r in enumerate(hybrid.retrieve(QUERIES, 8)):
        assert {"search_ms", "bm25_ms", "fuse_ms"} <= set(r.timings_ms)
        assert [b.rank for b in r.blocks] == list(range(1, len(r.blocks) + 1))
        rows = [hybrid.index.blocks._table.column("id").to_pylist().index(b.block.id) for b in r.blocks]
        ip = index.reconstruct_batch(np.asarray(rows)) @ xq[q]  # the relevance score, computed here
        np.testing.assert_allclose([b.score for b in r.blocks], ip, rtol=1e-5, atol=1e-6)
    # a BM25 rank-1 block reaches the top of the fused list even where dense search ranks it lower
    part, _ = open_bm25(hybrid.index)  # type: ignore[misc]
    _, J = part.search(QUERIES, 1)
    ids = hybrid.index.blocks._table.column("id").to_pylist()
    for q, r in enumerate(hybrid.retrieve(QUERIES, 3)):
        assert ids[int(J[q, 0])] in [b.block.id for b in r.blocks]
    assert "bm25_ms" not in dense.retrieve(QUERIES, 3)[0].timings_ms
    a = hybrid.answer(QUERIES[:1], 5)[0]
    assert a.best.answer.strip() and {"bm25_ms", "fuse_ms", "read_ms"} <= set(a.timings_ms)


def test_all_weight_on_dense_is_dense_retrieval(hybrid_home: Path, model) -> None:  # type: ignore[no-untyped-def]
    dense = QAEngine(model, open_version(hybrid_home / "indexes", "small", 1))
    fused = QAEngine(model, open_version(hybrid_home / "indexes", "small", 3))
    for d, f in zip(dense.retrieve(QUERIES, 6), fused.retrieve(QUERIES, 6)):
        assert [b.block.id for b in d.blocks] == [b.block.id for b in f.blocks]
        np.testing.assert_allclose([b.score for b in d.blocks], [b.score for b in f.blocks], rtol=1e-6)


def test_the_reader_adds_the_fused_score_where_the_model_says_so(hybrid_home: Path, model) -> None:  # type: ignore[no-untyped-def]
    """``hybrid_relevance: fused``: each block keeps its inner product as ``score`` and carries its fused score,
    computed here from the two lists; the answer's scores are span score + relevance_scale × fused score, with
    the same spans as the dense-relevance model (a per-block shift does not move a block's best span)."""
    iv = open_version(hybrid_home / "indexes", "small", 2)
    as_dense, as_fused = QAEngine(model, iv), QAEngine(dataclasses.replace(model, hybrid_relevance="fused"), iv)
    part, cfg = open_bm25(iv)  # type: ignore[misc]
    xq = embed_texts(model.query, QUERIES).numpy()
    F, If = fuse(cfg, search(iv.index, xq, cfg.depth), part.search(QUERIES, cfg.depth), 5)
    found = as_fused.retrieve_blocks(QUERIES, 5, {})
    ids = iv.blocks._table.column("id").to_pylist()
    scale = model.reader.config.relevance_scale
    for q, (blocks, a_dense, a_fused) in enumerate(
        zip(found, as_dense.answer(QUERIES, 5), as_fused.answer(QUERIES, 5))
    ):
        assert [b.block.id for b in blocks] == [ids[int(r)] for r in If[q]]
        np.testing.assert_allclose([b.fused for b in blocks], F[q], rtol=1e-6)
        assert len({b.score for b in blocks} | {b.fused for b in blocks}) > len(blocks)  # two different scores
        by_id = {c.block.block.id: c for c in a_dense.candidates}
        for c in a_fused.candidates:
            d = by_id[c.block.block.id]
            assert (c.answer, c.start_char) == (d.answer, d.start_char)
            assert c.block.fused is not None
            np.testing.assert_allclose(c.score - scale * c.block.fused, d.score - scale * d.block.score, atol=1e-4)
    # on a dense index version there is no fused score: the reader adds the inner product either way
    dense_iv = open_version(hybrid_home / "indexes", "small", 1)
    for a, b in zip(
        QAEngine(model, dense_iv).answer(QUERIES, 5),
        QAEngine(dataclasses.replace(model, hybrid_relevance="fused"), dense_iv).answer(QUERIES, 5),
    ):
        assert [(c.answer, c.score) for c in a.candidates] == [(c.answer, c.score) for c in b.candidates]
        assert all(c.block.fused is None for c in b.candidates)


def test_hybrid_relevance_is_read_from_model_json_and_checked(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    for f in BUNDLED_MODEL.iterdir():  # the bundled version's files linked, model.json changed
        if f.name != "model.json":
            (d / f.name).symlink_to(f)
    spec = json.loads((BUNDLED_MODEL / "model.json").read_text())
    spec["default_corpus"] = str(BUNDLED_MODEL / spec["default_corpus"])
    (d / "model.json").write_text(json.dumps({**spec, "hybrid_relevance": "bm25"}))
    with pytest.raises(ModelDirError, match="hybrid_relevance 'bm25'"):
        load_model_dir(d, "m", 1)
    (d / "model.json").write_text(json.dumps({**spec, "hybrid_relevance": "fused"}))
    assert load_model_dir(d, "m", 1).hybrid_relevance == "fused"
    assert load_model_dir(BUNDLED_MODEL, "minilm-squad", 1).hybrid_relevance == "dense"  # absent: dense


def test_relevance_scores_without_stored_vectors() -> None:
    """An index that cannot give vectors back (IVF-PQ without a direct map): a fused row that dense search
    did not return gets the query's lowest dense score, the bound it lies under."""
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((600, 8)).astype(np.float32)
    ivf = faiss.index_factory(8, "IVF4,PQ2x4", faiss.METRIC_INNER_PRODUCT)
    ivf.train(xb)
    ivf.add(xb)
    xq = xb[:1]
    D = np.array([[3.0, 2.0, 1.5]], dtype=np.float32)
    I = np.array([[0, 7, 9]])
    out = relevance_scores(ivf, xq, np.array([[7, 42, 0, -1]]), (D, I))
    np.testing.assert_array_equal(out, [[2.0, 1.5, 3.0, -np.inf]])


def test_the_bundled_default_is_hybrid() -> None:
    """The bundled index version 2: version 1's embeddings (same FAISS file) plus a BM25 part over its blocks."""
    from service.settings import BUNDLED_HOME

    v1, v2 = (open_version(BUNDLED_HOME / "indexes", "minilm-squad", v) for v in (1, 2))
    assert v2.manifest.checksums["index.faiss"] == v1.manifest.checksums["index.faiss"]
    part, fusion = open_bm25(v2)  # type: ignore[misc]
    assert fusion == FusionConfig() and part.count == v2.manifest.count == v1.manifest.count
    _, I = part.search(["Which NFL team won Super Bowl 50?"], 3)
    assert v2.blocks.get([int(I[0, 0])])[0].id.startswith("dev/Super_Bowl_50/")
    v1.close()
    v2.close()
