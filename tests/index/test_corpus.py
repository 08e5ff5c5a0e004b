"""index.corpus: reading JSON Lines corpora and splitting long texts into blocks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from index.corpus import CorpusError, read_corpus, split_blocks
from realm_core.tokenizer import WordPieceTokenizer
from tests.conftest import BUNDLED_MODEL


def test_reads_plain_and_gzip(tmp_path: Path) -> None:
    lines = [{"id": "a", "title": "T", "text": "one"}, {"id": "b", "text": "two"}]
    body = "".join(json.dumps(d) + "\n" for d in lines)
    (tmp_path / "c.jsonl").write_text(body)
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(body)
    for name in ("c.jsonl", "c.jsonl.gz"):
        docs = list(read_corpus(tmp_path / name))
        assert [(d.id, d.title, d.text) for d in docs] == [("a", "T", "one"), ("b", "", "two")]


@pytest.mark.parametrize("line, needle", [
    ("not json", ":1: not JSON"),
    ('{"id": "a"}', "field 'text'"),
    ('{"id": 3, "text": "x"}', "field 'id'"),
    ('{"id": "a", "text": "x", "title": 5}', "field 'title'"),
    ("[1, 2]", "expected an object"),
])
def test_bad_lines_name_line_and_field(tmp_path: Path, line: str, needle: str) -> None:
    (tmp_path / "c.jsonl").write_text(line + "\n")
    with pytest.raises(CorpusError, match=needle):
        list(read_corpus(tmp_path / "c.jsonl"))


def test_repeated_id_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(CorpusError, match=":2: id 'a' repeats"):
        list(read_corpus(tmp_path / "c.jsonl"))


def test_split_blocks_keeps_source_id_and_text(tmp_path: Path) -> None:
    tok = WordPieceTokenizer.from_dir(BUNDLED_MODEL)
    long_text = " ".join(f"word{i} unbelievably" for i in range(120))
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"id": "long", "title": "L", "text": long_text}) + "\n"
        + json.dumps({"id": "short", "title": "S", "text": "short text"}) + "\n")
    blocks = list(split_blocks(read_corpus(tmp_path / "c.jsonl"), tok, 64))
    long_blocks = [b for b in blocks if b.id.startswith("long")]
    assert len(long_blocks) > 1
    assert [b.id for b in long_blocks] == [f"long#{i}" for i in range(len(long_blocks))]
    assert "".join(b.text for b in long_blocks) == long_text
    assert all(len(tok.pieces([b.text])[0].ids) <= 64 for b in long_blocks)
    assert blocks[-1].id == "short" and blocks[-1].text == "short text"
