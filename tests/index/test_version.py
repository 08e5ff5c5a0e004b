"""index.version + index.build: build → publish → open → search round trip, and the manifest check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.faiss_index import search
from index.version import IndexVersionError, list_versions, open_version, version_files
from realm_core.model_dir import embed_texts, load_model_dir
from tests.conftest import BUNDLED_MODEL, make_home, write_corpus


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)


def test_round_trip_finds_each_paragraph_by_its_own_text(small_home: Path, model) -> None:  # type: ignore[no-untyped-def]
    v = open_version(small_home / "indexes", "small")
    assert v.manifest.embedder == "minilm-squad/1" and v.manifest.count == v.index.ntotal == len(v.blocks)
    blocks = v.blocks.get(list(range(len(v.blocks))))
    xq = embed_texts(model.query, [f"{b.title}. {b.text}" for b in blocks]).numpy()
    D, I = search(v.index, xq, 3)
    assert (I[:, 0] == np.arange(len(blocks))).all()
    assert (np.diff(D, axis=1) <= 1e-6).all()  # best first
    # exact search equals brute force inner products
    xb = v.index.reconstruct_n(0, v.index.ntotal)
    np.testing.assert_allclose(D[:, 0], (xq * xb).sum(1), rtol=1e-5, atol=1e-5)


def test_versions_are_numbered_and_staging_is_invisible(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    from index.build import build_index

    home = make_home(tmp_path / "h")
    write_corpus(tmp_path / "c.jsonl", 3)
    (home / "indexes" / "x").mkdir(parents=True)
    (home / "indexes" / "x" / ".staging-abandoned").mkdir()
    m1 = build_index(model, tmp_path / "c.jsonl", home / "indexes", "x", progress=False)
    m2 = build_index(model, tmp_path / "c.jsonl", home / "indexes", "x", progress=False)
    assert (m1.version, m2.version) == (1, 2)
    assert list_versions(home / "indexes", "x") == [1, 2]
    assert open_version(home / "indexes", "x").manifest.version == 2


def test_failed_build_leaves_nothing(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    from index.build import build_index

    home = make_home(tmp_path / "h")
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\nnot json\n')
    with pytest.raises(ValueError):
        build_index(model, tmp_path / "bad.jsonl", home / "indexes", "x", progress=False)
    assert list((home / "indexes" / "x").iterdir()) == []


def _copy_version(small_home: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "indexes" / "small" / "1"
    shutil.copytree(small_home / "indexes" / "small" / "1", dst)
    return tmp_path / "indexes"


def test_corrupt_index_file_is_refused(small_home: Path, tmp_path: Path) -> None:
    indexes = _copy_version(small_home, tmp_path)
    f = version_files(indexes / "small" / "1").faiss_index
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexVersionError, match="checksum"):
        open_version(indexes, "small", 1)


def test_block_count_mismatch_is_refused(small_home: Path, tmp_path: Path) -> None:
    indexes = _copy_version(small_home, tmp_path)
    files = version_files(indexes / "small" / "1")
    index = faiss.read_index(str(files.faiss_index))
    index.remove_ids(np.array([0], dtype=np.int64))
    faiss.write_index(index, str(files.faiss_index))
    from index.version import sha256_file

    m = json.loads(files.manifest.read_text())
    m["checksums"]["index.faiss"] = sha256_file(files.faiss_index)  # checksums fine, counts wrong
    files.manifest.write_text(json.dumps(m))
    with pytest.raises(IndexVersionError, match="manifest says"):
        open_version(indexes, "small", 1)


def test_missing_manifest_is_refused(small_home: Path, tmp_path: Path) -> None:
    indexes = _copy_version(small_home, tmp_path)
    version_files(indexes / "small" / "1").manifest.unlink()
    with pytest.raises(IndexVersionError, match="missing"):
        open_version(indexes, "small", 1)
