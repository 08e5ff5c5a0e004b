"""Corpus reading and block splitting.

A corpus is JSON Lines of ``{"id", "title", "text"}`` (plain or gzipped). Texts longer than
``block_max_tokens`` wordpieces are split into several blocks with ids ``<id>#<n>`` (n from 0); a text
that fits keeps its id.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from index.block_store import Block
from realm_core.tokenizer import WordPieceTokenizer


class CorpusError(ValueError):
    """A corpus line that is not a JSON object with string ``id``, ``title`` and ``text``."""


def _open(path: Path) -> IO[str]:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")


def read_corpus(path: str | Path) -> Iterator[Block]:
    """Documents of a JSON Lines corpus, in file order.

    Raises:
        CorpusError: naming the line number and the field at fault; also for a repeated id.
    """
    seen: set[str] = set()
    with _open(Path(path)) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(doc, dict):
                raise CorpusError(f"{path}:{n}: expected an object")
            for field in ("id", "text"):
                if not isinstance(doc.get(field), str) or not doc[field]:
                    raise CorpusError(f"{path}:{n}: field {field!r} must be a non-empty string")
            title = doc.get("title", "")
            if not isinstance(title, str):
                raise CorpusError(f"{path}:{n}: field 'title' must be a string")
            if doc["id"] in seen:
                raise CorpusError(f"{path}:{n}: id {doc['id']!r} repeats")
            seen.add(doc["id"])
            yield Block(doc["id"], title, doc["text"])


def split_blocks(docs: Iterator[Block], tokenizer: WordPieceTokenizer, block_max_tokens: int) -> Iterator[Block]:
    """Blocks of at most ``block_max_tokens`` wordpieces (of ``tokenizer``) from documents."""
    for doc in docs:
        ranges = tokenizer.split_text(doc.text, block_max_tokens)
        if len(ranges) == 1:
            yield doc
            continue
        for n, (s, e) in enumerate(ranges):
            yield Block(f"{doc.id}#{n}", doc.title, doc.text[s:e])
