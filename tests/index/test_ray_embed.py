"""The Ray executor (index/ray_embed.py) on a local Ray: every chunk comes back once, with the block embeddings
the build process computes itself; without Ray the error names the extra to install."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from index.ray_embed import RayExecutor, RayNotInstalled, RayOptions, import_ray
from realm_core.model_dir import embed_texts, load_model_dir
from tests.service.tiny_home import questions, write_corpus, write_model


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(RayNotInstalled, match=r"pip install 'realmqa\[ray\]'"):
        import_ray()


def test_a_ray_build_without_ray_stops_at_once_naming_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    from service.cli import main

    write_model(tmp_path / "models" / "tiny" / "1")
    write_corpus(tmp_path / "corpus.jsonl", 5)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit, match=r"ray executor needs Ray Data.*pip install 'realmqa\[ray\]'"):
        main(["index", "build", "--home", str(tmp_path), "--model", "tiny", "--corpus", str(tmp_path / "corpus.jsonl"),
              "--index", "tiny", "--executor", "ray"])
    assert not (tmp_path / "indexes" / "tiny").exists() or not any((tmp_path / "indexes" / "tiny").iterdir())


@pytest.mark.ray
def test_every_chunk_comes_back_once_equal_to_embedding_in_process(ray_address: str, tmp_path: Path) -> None:
    write_model(tmp_path / "m")
    block = load_model_dir(tmp_path / "m", "tiny", 1).block
    texts = questions(150, seed=3)
    chunks = [(i, texts[s:s + 16]) for i, s in enumerate(range(0, 150, 16))]  # 10 chunks, the last of 6
    ex = RayExecutor(options=RayOptions(actors=2, window_chunks=6))  # 2 Ray Data runs: 6 chunks, then 4
    got = list(ex.embed_chunks(block, 8, iter(chunks)))
    assert sorted(i for i, _ in got) == list(range(10))
    for (_, xb), (_, t) in zip(sorted(got, key=lambda g: g[0]), chunks):
        assert xb.dtype == np.float32 and xb.shape == (len(t), block.embedder.config.dim)
        np.testing.assert_allclose(xb, embed_texts(block, t, 8).numpy(), rtol=0, atol=1e-6)
