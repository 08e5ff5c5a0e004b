"""A swap warms the new index version outside the batch lock, then serves it: the old version answers while
the new one warms; a version whose smoke search finds no block is rejected and the old one keeps serving."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.home import Home
from index.pipeline import build_from_corpus
from index.resident import Warmup, resident_bytes
from index.version import Manifest, publish, version_files
from service.errors import IndexRejected
from service.registry import Registry
from tests.service.test_index_swap import write_corpus
from tests.service.tiny_home import write_model


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """Model tiny/1 and its index ``tiny``: version 1 over blocks one-*, version 2 over blocks two-*."""
    write_model(tmp_path / "models" / "tiny" / "1")
    for v, prefix in ((1, "one"), (2, "two")):
        write_corpus(tmp_path / f"{prefix}.jsonl", 40, prefix, v)
        assert build_from_corpus(Home(tmp_path), "tiny", "tiny/1", tmp_path / f"{prefix}.jsonl").version == v
    return tmp_path


def start_on_version_1(home: Path) -> Registry:
    (home / "indexes" / ".pins.json").unlink(missing_ok=True)
    registry = Registry.from_home(home, build_missing=False)
    engine = registry.get(None)
    assert engine.index_ref == "tiny/2"  # the newest; roll back to 1 to start from it
    registry.activate_index("tiny", 1)
    return registry


def test_the_old_version_serves_while_the_new_one_warms_then_the_new_one_serves(home: Path) -> None:
    registry = start_on_version_1(home)
    engine = registry.get(None)
    entered, gate = threading.Event(), threading.Event()
    warm = engine.warmer
    calls: list[tuple[Path, int]] = []

    def gated(path: Path, serving_bytes: int) -> Warmup:
        calls.append((path, serving_bytes))
        entered.set()
        assert gate.wait(60)
        return warm(path, serving_bytes)

    engine.warmer = gated  # type: ignore[method-assign]
    v1, v2 = (version_files(home / "indexes" / "tiny" / str(v)).faiss_index for v in (1, 2))
    with ThreadPoolExecutor(2) as pool:
        swapping = pool.submit(registry.activate_index, "tiny", 2)
        try:
            assert entered.wait(60), swapping.result(1) if swapping.done() else "the warm-up never began"
            during = pool.submit(engine.answer, ["alpha bravo?"], 2).result(60)  # not blocked by the warm-up
            assert not swapping.done()
        finally:
            gate.set()
        assert [e.model_ref for e in swapping.result(60)] == ["tiny/1"]
    assert calls == [(v2, v1.stat().st_size)]  # it warmed version 2 within the memory version 1 leaves
    assert during[0].index_ref == "tiny/1" and during[0].best.block.block.id.startswith("one-")
    after = engine.answer(["alpha bravo?"], 2)[0]
    assert after.index_ref == "tiny/2" and after.best.block.block.id.startswith("two-")
    w = engine.last_warmup
    assert w is not None and (w.method, w.warmed) == ("populate", v2.stat().st_size)
    assert resident_bytes(v2) >= v2.stat().st_size  # every page of the new version is mapped


def test_a_version_whose_smoke_search_finds_no_block_is_rejected(home: Path) -> None:
    """A version whose files and manifest are sound but whose vectors are NaN: every check before the smoke
    search passes; the smoke search finds no block, and the version is refused."""
    registry = start_on_version_1(home)
    engine = registry.get(None)
    one = home / "indexes" / "tiny" / "1"
    m = Manifest.read(version_files(one).manifest)
    scratch = Home(home).new_scratch("tiny", "staging")
    try:
        staged = version_files(scratch.path)
        shutil.copy(version_files(one).blocks, staged.blocks)
        nan = faiss.IndexFlatIP(m.dim)
        nan.add(np.full((m.count, m.dim), np.nan, dtype=np.float32))
        faiss.write_index(nan, str(staged.faiss_index))
        fields = {k: v for k, v in dataclasses.asdict(m).items()
                  if k not in ("version", "checksums", "sizes", "created_at", "manifest_sha256", "format")}
        bad = publish(scratch.path, fields)
    finally:
        scratch.release()
    with pytest.raises(IndexRejected, match="a smoke search returned no block"):
        registry.activate_index("tiny", bad.version)
    a = engine.answer(["alpha bravo?"], 2)[0]
    assert a.index_ref == "tiny/1" and a.best.block.block.id.startswith("one-")
