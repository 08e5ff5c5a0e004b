"""index.block_store's reader wordpieces: a pipeline build stores each block's wordpieces equal to tokenising
its text again, keyed to the reader tokenizer's content id; a store without them (an old version) or with
another tokenizer's gives none, and the bundled old version still answers."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from index.block_store import SCHEMA, Block, BlockStore, BlockStoreWriter, ReaderWordpieces
from index.version import open_version
from realm_core.model_dir import load_model_dir
from realm_core.tokenizer import WordPieceTokenizer
from service.engine import QAEngine
from service.settings import BUNDLED_HOME
from tests.conftest import BUNDLED_MODEL


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_dir(BUNDLED_MODEL)


def test_built_version_stores_the_reader_wordpieces(small_home: Path, tok: WordPieceTokenizer) -> None:
    store = open_version(small_home / "indexes", "small").blocks
    assert store.wordpieces_tokenizer == tok.content_id
    rows = list(range(len(store)))
    stored = store.get(rows, tok.content_id)
    again = tok.pieces([b.text for b in stored])
    assert len(stored) == 24
    for b, p in zip(stored, again, strict=True):
        assert b.pieces is not None and b.pieces.ids == p.ids and b.pieces.offsets == p.offsets
    assert all(b.pieces is None for b in store.get(rows))  # no tokenizer named: text only
    assert all(b.pieces is None for b in store.get(rows, "another tokenizer"))


def test_store_round_trip_and_old_schema(tmp_path: Path, tok: WordPieceTokenizer) -> None:
    blocks = [Block("a", "", "Denver Broncos won Super Bowl 50 at Levi's Stadium."), Block("b", "t", "Élodie's café.")]
    cols = ReaderWordpieces(tok)
    assert cols.fields[0].type == pa.list_(pa.uint16())  # 30,522 wordpieces fit in 16 bits
    schema = pa.schema([*SCHEMA, *cols.fields])
    with BlockStoreWriter(tmp_path / "new.arrow", schema=schema) as w:
        w.add_table(pa.table({"id": [b.id for b in blocks], "title": [b.title for b in blocks],
                              "text": [b.text for b in blocks], **cols.columns(blocks)}, schema=schema))
    got = BlockStore(tmp_path / "new.arrow").get([1, 0], tok.content_id)
    assert [b.pieces for b in got] == tok.pieces([blocks[1].text, blocks[0].text])
    with BlockStoreWriter(tmp_path / "old.arrow") as w:
        for b in blocks:
            w.add(b.id, b.title, b.text)
    old = BlockStore(tmp_path / "old.arrow")
    assert old.wordpieces_tokenizer is None
    assert [b.pieces for b in old.get([0, 1], tok.content_id)] == [None, None]


def test_rows_across_record_batches_come_back_in_the_order_asked(tmp_path: Path, tok: WordPieceTokenizer) -> None:
    """A store written in several record batches: any rows (repeated, unordered, from every batch) come back
    as reading each row alone from the whole table, wordpieces included."""
    texts = [f"Block number {i} is about topic {i * 7 % 5}." for i in range(11)]
    blocks = [Block(str(i), f"t{i}", t) for i, t in enumerate(texts)]
    cols = ReaderWordpieces(tok)
    schema = pa.schema([*SCHEMA, *cols.fields])
    with BlockStoreWriter(tmp_path / "s.arrow", schema=schema) as w:
        for i in range(0, 11, 4):  # record batches of 4, 4 and 3 rows
            part = blocks[i:i + 4]
            w.add_table(pa.table({"id": [b.id for b in part], "title": [b.title for b in part],
                                  "text": [b.text for b in part], **cols.columns(part)}, schema=schema))
    store = BlockStore(tmp_path / "s.arrow")
    assert store.table.column("text").num_chunks == 3
    rows = [10, 0, 5, 5, 3, 8, 0, 7]
    got = store.get(rows, tok.content_id)
    assert [(b.id, b.title, b.text) for b in got] == [(blocks[r].id, blocks[r].title, blocks[r].text) for r in rows]
    assert [b.pieces for b in got] == tok.pieces([texts[r] for r in rows])
    assert [b.text for b in store.get(rows)] == [texts[r] for r in rows]
    assert store.get([]) == []
    with pytest.raises(IndexError, match="block row 11"):
        store.get([0, 11])


def test_content_id_is_the_tokenizers_content(tmp_path: Path, tok: WordPieceTokenizer) -> None:
    tok.save(tmp_path)  # the same tokenizer written again: the same id
    assert WordPieceTokenizer.from_dir(tmp_path).content_id == tok.content_id
    other = tmp_path / "other"
    other.mkdir()
    (other / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n")
    assert WordPieceTokenizer.from_dir(other).content_id != tok.content_id


def test_stored_and_retokenised_blocks_read_the_same(small_home: Path) -> None:
    """The engine reads stored wordpieces; the same blocks tokenised on read give the same logits."""
    engine = QAEngine(load_model_dir(BUNDLED_MODEL, "minilm-squad", 1), open_version(small_home / "indexes", "small"))
    qs = ["Which NFL team won Super Bowl 50?", "What is in front of the Notre Dame Main Building?"]
    q = engine.question_pieces(qs)
    stored = engine.retrieve_blocks(qs, 5, {}, pieces=True)
    plain = engine.retrieve_blocks(qs, 5, {})
    assert all(b.block.pieces is not None for bs in stored for b in bs)
    assert all(b.block.pieces is None for bs in plain for b in bs)
    for a, b in zip(engine.read(q, stored).readings, engine.read(q, plain).readings, strict=True):
        assert a.rows == b.rows
        assert (a.span_logits - b.span_logits).abs().max().item() <= 1e-5


def test_bundled_old_version_still_serves() -> None:
    """The committed bundled index (built before stored wordpieces) has none and answers, tokenised on read."""
    index = open_version(BUNDLED_HOME / "indexes", "minilm-squad", 1)
    assert index.blocks.wordpieces_tokenizer is None
    engine = QAEngine(load_model_dir(BUNDLED_MODEL, "minilm-squad", 1), index)
    a = engine.answer(["Which NFL team won Super Bowl 50?"], 5)[0]
    assert a.best.answer == "Denver Broncos"
    assert a.best.block.block.pieces is None
