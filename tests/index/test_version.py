"""index.version + index.pipeline: build → publish → open → search round trip, and the manifest check."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

import index.version
from index.faiss_index import search
from index.home import Home
from index.options import BuildOptions
from index.pipeline import build_from_corpus
from index.version import (
    IndexVersionError,
    Manifest,
    list_versions,
    open_version,
    verify_version,
    version_files,
)
from realm_core.model_dir import embed_texts, load_model_dir
from realm_core.model_spec import sha256_file
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


def test_versions_are_numbered_and_staging_is_invisible(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    write_corpus(tmp_path / "c.jsonl", 3)
    (home / "indexes" / "x").mkdir(parents=True)
    (home / "indexes" / "x" / ".staging-abandoned").mkdir()
    (home / "indexes" / "x" / "²").mkdir()  # not ASCII digits: never a version
    m1 = build_from_corpus(Home(home), "x", "minilm-squad", tmp_path / "c.jsonl")
    m2 = build_from_corpus(Home(home), "x", "minilm-squad", tmp_path / "c.jsonl")
    assert (m1.version, m2.version) == (1, 2)
    assert list_versions(home / "indexes", "x") == [1, 2]
    assert open_version(home / "indexes", "x").manifest.version == 2
    assert m2.embedder_id == Home(home).model_version("minilm-squad").embedder_id
    assert sorted(p.name for p in (home / "indexes" / "x").iterdir()) == [".staging-abandoned", "1", "2", "²"]


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        build_from_corpus(Home(home), "x", "minilm-squad", tmp_path / "bad.jsonl")
    assert list((home / "indexes" / "x").iterdir()) == []


def test_numbered_entries_that_are_not_versions_are_skipped(tmp_path: Path) -> None:
    """Regression: a file named like the next version made publish retry that number forever."""
    home = make_home(tmp_path / "h")
    write_corpus(tmp_path / "c.jsonl", 2)
    (home / "indexes" / "x").mkdir(parents=True)
    (home / "indexes" / "x" / "1").write_text("not a version")
    m = build_from_corpus(Home(home), "x", "minilm-squad", tmp_path / "c.jsonl")
    assert m.version == 2 and list_versions(home / "indexes", "x") == [2]


def test_an_occupied_version_path_fails_after_bounded_tries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another publisher takes every number just before our rename: publish gives up after ``publish_tries``
    with a clear error and leaves no staging directory."""
    home = make_home(tmp_path / "h")
    write_corpus(tmp_path / "c.jsonl", 2)
    rename = os.rename
    tried = []

    def racing_rename(src: str | Path, dst: str | Path) -> None:
        Path(dst).mkdir()
        (Path(dst) / "manifest.json").write_text("{}")  # the other publisher's version
        tried.append(Path(dst).name)
        rename(src, dst)  # the real rename: fails, the target is a non-empty directory

    monkeypatch.setattr(index.version.os, "rename", racing_rename)
    with pytest.raises(IndexVersionError, match=r"versions 1\.\.3 were all occupied"):
        build_from_corpus(Home(home), "x", "minilm-squad", tmp_path / "c.jsonl", BuildOptions(publish_tries=3))
    assert tried == ["1", "2", "3"]
    assert sorted(p.name for p in (home / "indexes" / "x").iterdir()) == ["1", "2", "3"]  # no staging left


def _copy_version(small_home: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "indexes" / "small" / "1"
    shutil.copytree(small_home / "indexes" / "small" / "1", dst)
    return tmp_path / "indexes"


def test_a_flipped_byte_is_found_by_verify_not_by_every_open(small_home: Path, tmp_path: Path) -> None:
    indexes = _copy_version(small_home, tmp_path)
    f = version_files(indexes / "small" / "1").blocks
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: an open checks sizes and the manifest, not every byte
    f.write_bytes(bytes(data))
    open_version(indexes, "small", 1).close()
    with pytest.raises(IndexVersionError, match="checksum"):
        verify_version(indexes, "small", 1)


def test_a_truncated_file_is_refused_on_open(small_home: Path, tmp_path: Path) -> None:
    indexes = _copy_version(small_home, tmp_path)
    f = version_files(indexes / "small" / "1").faiss_index
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(IndexVersionError, match="bytes, the manifest says"):
        open_version(indexes, "small", 1)


def _rewrite_manifest(path: Path, **changes: object) -> None:
    m = dataclasses.replace(Manifest.read(path), **changes)  # type: ignore[arg-type]
    path.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(m, manifest_sha256=m.content_sha256()))))


def test_block_count_mismatch_is_refused(small_home: Path, tmp_path: Path) -> None:
    indexes = _copy_version(small_home, tmp_path)
    files = version_files(indexes / "small" / "1")
    index = faiss.read_index(str(files.faiss_index))
    index.remove_ids(np.array([0], dtype=np.int64))
    faiss.write_index(index, str(files.faiss_index))
    m = Manifest.read(files.manifest)
    _rewrite_manifest(files.manifest, checksums={**m.checksums, "index.faiss": sha256_file(files.faiss_index)},
                      sizes={**m.sizes, "index.faiss": files.faiss_index.stat().st_size})  # files fine, counts wrong
    with pytest.raises(IndexVersionError, match="manifest says"):
        open_version(indexes, "small", 1)


def test_an_edited_manifest_is_refused(small_home: Path, tmp_path: Path) -> None:
    indexes = _copy_version(small_home, tmp_path)
    files = version_files(indexes / "small" / "1")
    d = json.loads(files.manifest.read_text())
    files.manifest.write_text(json.dumps({**d, "embedder_id": "0" * 64}))
    with pytest.raises(IndexVersionError, match="its own checksum"):
        open_version(indexes, "small", 1)


@pytest.mark.parametrize("content", [b"\xff\xfe{", b"{", b"[]"])
def test_an_unreadable_manifest_is_an_index_version_error(small_home: Path, tmp_path: Path, content: bytes) -> None:
    indexes = _copy_version(small_home, tmp_path)
    version_files(indexes / "small" / "1").manifest.write_bytes(content)
    with pytest.raises(IndexVersionError, match="not a readable manifest"):
        open_version(indexes, "small", 1)


def test_the_bundled_format_1_version_still_opens() -> None:
    """The committed default index has a format 1 manifest (sha256 only, no sizes): it is re-hashed on open."""
    from service.settings import BUNDLED_HOME

    v = open_version(BUNDLED_HOME / "indexes", "minilm-squad", 1)
    assert v.manifest.format == 1 and v.manifest.embedder_id == "" and v.manifest.count == len(v.blocks)
    v.close()


def test_missing_manifest_is_refused(small_home: Path, tmp_path: Path) -> None:
    indexes = _copy_version(small_home, tmp_path)
    version_files(indexes / "small" / "1").manifest.unlink()
    with pytest.raises(IndexVersionError, match="missing"):
        open_version(indexes, "small", 1)


def test_cli_verify_rehashes_every_file(small_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    indexes = _copy_version(small_home, tmp_path)
    (tmp_path / "models").mkdir()
    main(["index", "verify", "--home", str(tmp_path), "--index", "small"])
    assert "small/1: ok" in capsys.readouterr().out
    f = version_files(indexes / "small" / "1").faiss_index
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as e:
        main(["index", "verify", "--home", str(tmp_path), "--index", "small/1"])
    assert e.value.code == 1 and "does not match its checksum" in capsys.readouterr().out
