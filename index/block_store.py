"""The block store: block ids, titles and texts in a memory-mapped Arrow IPC file.

Rows are read through the memory map, so a store of REALM's 13.35M blocks costs page cache, not Python
objects. Written in record batches by :class:`BlockStoreWriter`; read by :class:`BlockStore`.

Columns: ``id``, ``title``, ``text`` (:data:`SCHEMA`), then any extra per-block columns a build adds
(:data:`index.chunks.BLOCK_COLUMNS`, e.g. the reader's wordpieces); a store is valid when its first columns
are :data:`SCHEMA`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])


@dataclass(frozen=True)
class Block:
    id: str
    title: str
    text: str


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

    def __len__(self) -> int:
        return self._table.num_rows

    def get(self, rows: Sequence[int]) -> list[Block]:
        """Blocks at the given row numbers, in that order.

        Raises:
            IndexError: a row is outside ``[0, len)``.
        """
        n = len(self)
        for r in rows:
            if not 0 <= r < n:
                raise IndexError(f"block row {r} outside [0, {n})")
        t = self._table.take(pa.array(list(rows), type=pa.int64()))
        ids, titles, texts = (t.column(c).to_pylist() for c in ("id", "title", "text"))
        return [Block(i, ti, tx) for i, ti, tx in zip(ids, titles, texts)]

    @property
    def table(self) -> pa.Table:
        """Every row and column, memory-mapped (for part builders and extra columns)."""
        return self._table

    @property
    def closed(self) -> bool:
        return self._table is None

    def close(self) -> None:
        self._table = None  # type: ignore[assignment]
        self._source.close()
