"""``realmqa index build``: corpus → blocks → block embeddings → FAISS index → published version."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.block_store import Block, BlockStoreWriter
from index.corpus import read_corpus, split_blocks
from index.faiss_index import new_index
from index.version import Manifest, publish, remove_staging, staging_dir, version_files
from realm_core.model_dir import QAModel, embed_texts

log = logging.getLogger(__name__)


def block_embedding_text(block: Block) -> str:
    """What the block embedder reads for a block: the title, then the text."""
    return f"{block.title}. {block.text}" if block.title else block.text


def build_index(model: QAModel, corpus: str | Path, indexes_dir: str | Path, name: str,
                factory: str = "Flat", batch_size: int = 64, chunk_blocks: int = 4096,
                progress: bool = True) -> Manifest:
    """Embed a corpus with ``model``'s block embedder and publish a new version of index ``name``.

    Blocks are embedded ``chunk_blocks`` at a time and added to the index and the block store as they
    come, so memory stays bounded by one chunk plus the index. Nothing is visible under
    ``indexes_dir/name`` until the version is complete (see :func:`index.version.publish`).

    Raises:
        index.corpus.CorpusError: a malformed corpus line.
        ValueError: a bad factory string, or a corpus with no blocks.
    """
    dim = model.block.embedder.config.dim
    index = new_index(dim, factory)
    staging = staging_dir(indexes_dir, name)
    files = version_files(staging)
    try:
        blocks = split_blocks(read_corpus(corpus), model.block.tokenizer, model.block_max_tokens)
        bar = tqdm(desc=f"embedding {name}", unit=" blocks", disable=not progress)
        chunk: list[Block] = []
        with BlockStoreWriter(files.blocks) as store:

            def flush() -> None:
                xb = embed_texts(model.block, [block_embedding_text(b) for b in chunk], batch_size).numpy()
                if not index.is_trained:
                    raise ValueError(f"factory {factory!r} needs training; build it with the index worker")
                index.add(np.ascontiguousarray(xb, dtype=np.float32))
                for b in chunk:
                    store.add(b.id, b.title, b.text)
                bar.update(len(chunk))
                chunk.clear()

            for b in blocks:
                chunk.append(b)
                if len(chunk) >= chunk_blocks:
                    flush()
            if chunk:
                flush()
            count = store.count
        bar.close()
        if count == 0:
            raise ValueError(f"corpus {corpus} has no blocks")
        import faiss

        faiss.write_index(index, str(files.faiss_index))
        manifest = publish(staging, dict(
            name=name, embedder=model.ref, dim=dim, count=count, metric="inner_product", factory=factory,
            block_max_tokens=model.block_max_tokens, corpus=Path(corpus).name))
    except BaseException:
        remove_staging(staging)
        raise
    log.info("published index %s/%d: %d blocks", name, manifest.version, count)
    return manifest
