"""The block store: block ids, titles and texts in a memory-mapped Arrow IPC file.

Rows are read through the memory map, so a store of REALM's 13.35M blocks costs page cache, not Python
objects. Written in record batches by :class:`BlockStoreWriter`; read by :class:`BlockStore`.

Columns: ``id``, ``title``, ``text`` (:data:`SCHEMA`), then any extra per-block columns a build adds
(:data:`index.chunks.BLOCK_COLUMNS`, e.g. the reader's wordpieces); a store is valid when its first columns
are :data:`SCHEMA`'s.

**Reader wordpieces** (:class:`ReaderWordpieces`, registered in :data:`index.chunks.BLOCK_COLUMNS`): every
build stores each block text's wordpieces under the model's reader tokenizer — ``reader_ids`` (list of
uint16, or int32 for vocabularies over 65,536) and ``reader_offsets`` (list of int32, ``start, end`` character
offsets per wordpiece, flattened) — so a request tokenises only its question. The columns' field metadata
``tokenizer`` holds the tokenizer's content id (:attr:`realm_core.tokenizer.WordPieceTokenizer.content_id`):
:meth:`BlockStore.get` fills :attr:`Block.pieces` only for a caller whose tokenizer has that id, and a store
without the columns (versions built before them) leaves it None, so its blocks are tokenised on read.
Cost: about 10 bytes per wordpiece on disk (a 16-bit id and two 32-bit offsets; page cache, memory-mapped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from realm_core.model_spec import resolve_path
from realm_core.tokenizer import Pieces, WordPieceTokenizer

if TYPE_CHECKING:
    from index.home import ModelVersion

SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])
WORDPIECE_COLUMNS = ("reader_ids", "reader_offsets")


@dataclass(frozen=True)
class Block:
    id: str
    title: str
    text: str
    # the text's reader wordpieces as stored at build time (BlockStore.get with the matching tokenizer id)
    pieces: Pieces | None = field(default=None, compare=False, repr=False)


class ReaderWordpieces:
    """The ``reader_ids`` / ``reader_offsets`` columns of a build (an :class:`index.chunks.BlockColumns`): each
    block text's wordpieces under ``tokenizer``, keyed to its content id in the fields' metadata."""

    def __init__(self, tokenizer: WordPieceTokenizer) -> None:
        self.tokenizer = tokenizer
        meta = {"tokenizer": tokenizer.content_id}
        id_type = pa.uint16() if tokenizer.vocab_size <= 1 << 16 else pa.int32()
        self.fields: Sequence[pa.Field] = [pa.field("reader_ids", pa.list_(id_type), metadata=meta),
                       pa.field("reader_offsets", pa.list_(pa.int32()), metadata=meta)]

    @classmethod
    def for_model(cls, model: ModelVersion) -> ReaderWordpieces:
        """The columns for a build with ``model``'s reader tokenizer (``model.json`` ``reader.tokenizer``)."""
        return cls(WordPieceTokenizer.from_dir(resolve_path(model.root, model.spec.reader.tokenizer)))

    def columns(self, blocks: Sequence[Block], batch: int = 4096) -> dict[str, pa.Array]:
        """The two columns for ``blocks``, tokenised ``batch`` texts at a time into flat arrays."""
        id_type, off_type = self.fields[0].type, self.fields[1].type
        ids: list[pa.Array] = [pa.array([], type=id_type)]
        offsets: list[pa.Array] = [pa.array([], type=off_type)]
        for i in range(0, len(blocks), batch):
            lengths, flat_ids, flat_offsets = self.tokenizer.pieces_flat([b.text for b in blocks[i:i + batch]])
            starts = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            ids.append(pa.ListArray.from_arrays(starts, pa.array(flat_ids, type=id_type.value_type)))
            offsets.append(pa.ListArray.from_arrays(pc.multiply(starts, 2),
                                                    pa.array(flat_offsets.ravel(), type=off_type.value_type)))
        return {"reader_ids": pa.concat_arrays(ids), "reader_offsets": pa.concat_arrays(offsets)}


class BlockStoreWriter:
    """Appends blocks to an Arrow IPC file in batches of ``batch_rows``; use as a context manager."""

    def __init__(self, path: str | Path, batch_rows: int = 65536, schema: pa.Schema = SCHEMA) -> None:
        if schema.names[:len(SCHEMA)] != SCHEMA.names:
            raise ValueError(f"a block store schema starts with {SCHEMA.names}, got {schema.names}")
        self.schema = schema
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)
        self._rows: dict[str, list[str]] = {"id": [], "title": [], "text": []}
        self._batch_rows = batch_rows
        self.count = 0

    def add(self, block_id: str, title: str, text: str) -> None:
        """Append one block (only for stores without extra columns: use :meth:`add_table` for those)."""
        self._rows["id"].append(block_id)
        self._rows["title"].append(title)
        self._rows["text"].append(text)
        self.count += 1
        if len(self._rows["id"]) >= self._batch_rows:
            self._flush()

    def add_table(self, table: pa.Table) -> None:
        """Append a whole table of blocks (this writer's schema) without per-block Python objects."""
        self._flush()
        self._writer.write_table(table.select(self.schema.names).cast(self.schema))
        self.count += table.num_rows

    def _flush(self) -> None:
        if self._rows["id"]:
            self._writer.write_batch(pa.record_batch(self._rows, schema=self.schema))
            self._rows = {"id": [], "title": [], "text": []}

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> BlockStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockStore:
    """Read-only, memory-mapped block store; ``get(rows)`` returns blocks by row number."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._source = pa.memory_map(str(path), "r")
        self._table = pa.ipc.open_file(self._source).read_all()
        if self._table.schema.names[:len(SCHEMA)] != SCHEMA.names or any(
                self._table.schema.field(f.name).type != f.type for f in SCHEMA):
            raise ValueError(f"{path}: block store schema {self._table.schema} does not start with {SCHEMA}")
        # Rows are taken from each record batch on its own: ``Table.take`` concatenates every chunk of a
        # column first (a copy of the whole store per call: ~90 ms at 100,000 REALM-sized blocks).
        self._batches = self._table.to_batches()
        self._batch_starts = np.cumsum([0] + [b.num_rows for b in self._batches])

    def __len__(self) -> int:
        return self._table.num_rows

    @property
    def wordpieces_tokenizer(self) -> str | None:
        """The content id of the tokenizer whose wordpieces the store keeps; None: no stored wordpieces."""
        names = self._table.schema.names
        if not all(c in names for c in WORDPIECE_COLUMNS):
            return None
        meta = self._table.schema.field("reader_ids").metadata or {}
        return meta.get(b"tokenizer", b"").decode() or None

    def get(self, rows: Sequence[int], tokenizer_id: str | None = None) -> list[Block]:
        """Blocks at the given row numbers, in that order; with ``tokenizer_id`` equal to
        :attr:`wordpieces_tokenizer`, each with its stored wordpieces (else ``pieces`` is None).

        Raises:
            IndexError: a row is outside ``[0, len)``.
        """
        n = len(self)
        for r in rows:
            if not 0 <= r < n:
                raise IndexError(f"block row {r} outside [0, {n})")
        pieces = tokenizer_id is not None and tokenizer_id == self.wordpieces_tokenizer
        names = ("id", "title", "text", *(WORDPIECE_COLUMNS if pieces else ()))
        rows_np = np.asarray(rows, dtype=np.int64)
        which = np.searchsorted(self._batch_starts, rows_np, side="right") - 1  # (rows,) record batch of each
        out: list[Block | None] = [None] * len(rows_np)
        for b in np.unique(which):
            at = np.flatnonzero(which == b)
            t = self._batches[b].select(names).take(pa.array(rows_np[at] - self._batch_starts[b]))
            cols = [t.column(c).to_pylist() for c in names]
            if pieces:
                blocks = [Block(i, ti, tx, Pieces(p, list(zip(o[::2], o[1::2])))) for i, ti, tx, p, o in zip(*cols)]
            else:
                blocks = [Block(i, ti, tx) for i, ti, tx in zip(*cols)]
            for j, blk in zip(at.tolist(), blocks):
                out[j] = blk
        return out  # type: ignore[return-value]

    @property
    def table(self) -> pa.Table:
        """Every row and column, memory-mapped (for part builders and extra columns)."""
        return self._table

    @property
    def closed(self) -> bool:
        return self._table is None

    def close(self) -> None:
        self._table = None  # type: ignore[assignment]
        self._batches = []
        self._source.close()
