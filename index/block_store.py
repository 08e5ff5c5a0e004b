"""The block store: block ids, titles and texts in a memory-mapped Arrow IPC file.

Rows are read through the memory map, so a store of REALM's 13.35M blocks costs page cache, not Python
objects. Written in record batches by :class:`BlockStoreWriter`; read by :class:`BlockStore`.
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

    def __init__(self, path: str | Path, batch_rows: int = 65536) -> None:
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, SCHEMA)
        self._rows: dict[str, list[str]] = {"id": [], "title": [], "text": []}
        self._batch_rows = batch_rows
        self.count = 0

    def add(self, block_id: str, title: str, text: str) -> None:
        self._rows["id"].append(block_id)
        self._rows["title"].append(title)
        self._rows["text"].append(text)
        self.count += 1
        if len(self._rows["id"]) >= self._batch_rows:
            self._flush()

    def add_table(self, table: pa.Table) -> None:
        """Append a whole table of blocks (schema :data:`SCHEMA`) without per-block Python objects."""
        self._flush()
        self._writer.write_table(table.cast(SCHEMA))
        self.count += table.num_rows

    def _flush(self) -> None:
        if self._rows["id"]:
            self._writer.write_batch(pa.record_batch(self._rows, schema=SCHEMA))
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
        if self._table.schema != SCHEMA:
            raise ValueError(f"{path}: block store schema {self._table.schema} is not {SCHEMA}")

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
    def closed(self) -> bool:
        return self._table is None

    def close(self) -> None:
        self._table = None  # type: ignore[assignment]
        self._source.close()
