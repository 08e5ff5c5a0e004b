"""Chunk files of a build and the pluggable embedding step.

A build's work directory holds, per chunk ``i`` of at most ``chunk_blocks`` blocks, ``blocks-NNNNN.arrow``
(the blocks, :mod:`index.block_store` schema plus any extra columns) and, once embedded,
``emb-NNNNN.npy`` (float32 (rows, dim) block embeddings, row ``r`` embeds block ``r`` of the chunk). Both are
written atomically (temporary name, then rename), so a file that exists is complete: a resumed build embeds
only the chunks without an ``emb`` file.

**Embedding executors** (:class:`EmbedExecutor`) turn block chunk files into embedding chunk files. The
protocol is one method, ``embed(request, on_chunk)``: for every chunk of ``request.chunks`` (in any order,
in any process) write ``chunk.embeddings`` with :func:`write_embeddings` from the texts of
:func:`chunk_texts`, using the block embedder of the model version at ``request.model_root``
(``realm_core.model_dir.load_model_dir``), then call ``on_chunk(chunk)`` in the calling process. The caller
picks the executor and the device; :class:`LocalExecutor` embeds in this process; :class:`ArrayExecutor`
copies precomputed embeddings (``convert-hf``).

**Extra block columns** (:data:`BLOCK_COLUMNS`): every registered factory is called with the model version
being built and returns a :class:`BlockColumns`, whose ``columns(blocks)`` adds per-block columns to each
block chunk (and so to the version's block store), e.g. the reader's wordpiece ids and offsets.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from index.block_store import SCHEMA, Block, BlockStoreWriter, ReaderWordpieces
from index.home import ModelVersion
from index.options import EXECUTORS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    number: int  # 0, 1, ...
    start: int  # row of its first block in the version
    rows: int  # blocks in the chunk
    blocks: Path  # blocks-NNNNN.arrow
    embeddings: Path  # emb-NNNNN.npy


def chunk_paths(work: Path, number: int) -> tuple[Path, Path]:
    """(blocks file, embeddings file) of chunk ``number`` (the one function that names them)."""
    return work / f"blocks-{number:05d}.arrow", work / f"emb-{number:05d}.npy"


def block_embedding_text(block: Block) -> str:
    """What the block embedder reads for a block: the title, then the text."""
    return f"{block.title}. {block.text}" if block.title else block.text


class BlockColumns(Protocol):
    """Extra per-block columns of the block store (a hook: register a factory in :data:`BLOCK_COLUMNS`)."""

    fields: Sequence[pa.Field]  # the columns' names and types, appended after SCHEMA's

    def columns(self, blocks: Sequence[Block]) -> dict[str, pa.Array]:
        """One array of ``len(blocks)`` values per field, by field name."""
        ...


# name → factory called with the model version being built; every registered one applies to every build.
BLOCK_COLUMNS: dict[str, Callable[[ModelVersion], BlockColumns]] = {
    "reader_wordpieces": ReaderWordpieces.for_model,  # the reader reads stored wordpieces (index.block_store)
}


def block_columns(model: ModelVersion) -> list[BlockColumns]:
    return [make(model) for make in BLOCK_COLUMNS.values()]


def _chunk_table(blocks: Sequence[Block], columns: Sequence[BlockColumns], schema: pa.Schema) -> pa.Table:
    data: dict[str, Any] = {"id": [b.id for b in blocks], "title": [b.title for b in blocks],
                            "text": [b.text for b in blocks]}
    for c in columns:
        data.update(c.columns(blocks))
    return pa.table(data, schema=schema)


def store_schema(columns: Sequence[BlockColumns]) -> pa.Schema:
    return pa.schema([*SCHEMA, *(f for c in columns for f in c.fields)])


def write_block_chunks(blocks: Iterable[Block], work: Path, chunk_blocks: int, columns: Sequence[BlockColumns],
                       done: int, on_chunk: Callable[[int, int], None]) -> None:
    """Write ``blocks`` as block chunk files of ``chunk_blocks`` blocks, skipping the first ``done`` chunks
    (already written by an interrupted run); ``on_chunk(number, rows)`` after each file is in place."""
    schema = store_schema(columns)
    it = iter(blocks)
    number = 0
    while True:
        chunk = [b for _, b in zip(range(chunk_blocks), it)]
        if not chunk:
            return
        if number >= done:
            path, _ = chunk_paths(work, number)
            tmp = path.with_name("." + path.name)
            with BlockStoreWriter(tmp, schema=schema) as w:
                w.add_table(_chunk_table(chunk, columns, schema))
            os.replace(tmp, path)
            on_chunk(number, len(chunk))
        number += 1


def chunk_texts(chunk: Chunk) -> list[str]:
    """The block embedder's input texts of a chunk's blocks, in row order."""
    with pa.memory_map(str(chunk.blocks), "r") as src:
        t = pa.ipc.open_file(src).read_all().select(["title", "text"])
    return [block_embedding_text(Block("", ti, tx)) for ti, tx in zip(t.column(0).to_pylist(), t.column(1).to_pylist())]


def write_embeddings(chunk: Chunk, xb: np.ndarray) -> None:
    """Write a chunk's (rows, dim) embeddings atomically as float32 ``.npy``.

    Raises:
        ValueError: ``xb`` does not have one row per block of the chunk.
    """
    if xb.ndim != 2 or len(xb) != chunk.rows:
        raise ValueError(f"chunk {chunk.number}: {xb.shape} embeddings for {chunk.rows} blocks")
    tmp = chunk.embeddings.with_name("." + chunk.embeddings.name)
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(xb, dtype=np.float32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, chunk.embeddings)


@dataclass(frozen=True)
class EmbedRequest:
    model_root: Path  # the model version directory whose block embedder embeds
    model_ref: str  # "name/version"
    chunks: tuple[Chunk, ...]  # chunks still to embed
    batch_size: int  # texts per forward pass


class EmbedExecutor(Protocol):
    def embed(self, request: EmbedRequest, on_chunk: Callable[[Chunk], None]) -> None:
        """Write ``chunk.embeddings`` for every chunk of the request; ``on_chunk`` after each, in this process."""
        ...


class LocalExecutor:
    """Embeds in this process with ``model``'s block embedder (loaded from the request when None), on
    ``device`` (a torch device string; None: the CPU). The caller chooses the device."""

    def __init__(self, model: Any = None, device: str | None = None) -> None:
        self.model, self.device = model, device

    def embed(self, request: EmbedRequest, on_chunk: Callable[[Chunk], None]) -> None:
        import torch

        from realm_core.model_dir import embed_texts, load_model_dir

        model = self.model
        if model is None:
            name, _, v = request.model_ref.partition("/")
            model = self.model = load_model_dir(request.model_root, name, int(v))
        device = torch.device(self.device) if self.device else None
        if device is not None:
            model.block.embedder.to(device)
        for chunk in request.chunks:
            xb = embed_texts(model.block, chunk_texts(chunk), request.batch_size, device).numpy()
            write_embeddings(chunk, xb)
            on_chunk(chunk)


class ArrayExecutor:
    """Copies precomputed embeddings: ``arrays`` yields one (rows, dim) array per chunk, in chunk order
    (e.g. a checkpoint's ``block_emb`` read ``chunk_blocks`` rows at a time)."""

    def __init__(self, arrays: Iterator[np.ndarray]) -> None:
        self.arrays = arrays

    def embed(self, request: EmbedRequest, on_chunk: Callable[[Chunk], None]) -> None:
        for chunk in request.chunks:
            write_embeddings(chunk, next(self.arrays))
            on_chunk(chunk)



def make_executor(name: str, device: str | None = None) -> EmbedExecutor:
    """The executor registered as ``name``, on ``device``.

    Raises:
        ValueError: an unknown name. ImportError: its module (or an optional dependency) is not installed.
    """
    if name not in EXECUTORS:
        raise ValueError(f"executor {name!r} is not one of {sorted(EXECUTORS)}")
    module, _, cls = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(device=device)  # type: ignore[no-any-return]
