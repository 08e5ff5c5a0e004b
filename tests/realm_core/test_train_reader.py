"""realm_core.train_reader: examples with negatives, collate's correct-span mask, held-out split."""

from __future__ import annotations

import pytest

from realm_core.bert import BertConfig
from realm_core.reader import ReaderConfig, span_candidates
from realm_core.tokenizer import WordPieceTokenizer
from realm_core.train_reader import build_examples, collate, split_heldout
from tests.conftest import BUNDLED_MODEL

ARTICLES = [
    {"title": "A", "paragraphs": [
        {"context": "The Denver Broncos won Super Bowl 50 in Santa Clara.",
         "qas": [{"id": "1", "question": "Who won Super Bowl 50?", "answers": [{"text": "Denver Broncos"}]}]},
        {"context": "The Carolina Panthers lost; the Denver Broncos celebrated.",
         "qas": [{"id": "2", "question": "Who lost?", "answers": [{"text": "Carolina Panthers"}]}]}]},
    {"title": "B", "paragraphs": [  # one paragraph: no other paragraph to read as a negative
        {"context": "Paris is the capital of France.",
         "qas": [{"id": "3", "question": "What is the capital of France?", "answers": [{"text": "Paris"}]}]}]},
]


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_dir(BUNDLED_MODEL)


def test_negatives_give_equal_rows_and_mark_every_occurrence(tok: WordPieceTokenizer) -> None:
    cfg = ReaderConfig(bert=BertConfig())
    examples = build_examples(tok, ARTICLES, cfg, 64, 16, negatives=1, seed=0)
    # the one-paragraph article's question is left out rather than reading fewer blocks
    assert len(examples) == 2 and all(len(ex.blocks) == 2 for ex in examples)
    inputs, correct = collate(tok, examples, 64, cfg.max_span_width)
    T = inputs["input_ids"].shape[1]
    starts, ends = span_candidates(T, cfg.max_span_width)
    assert correct.shape == (4, len(starts))
    # question 1: "denver broncos" occurs in its gold block and in the negative (the other paragraph)
    for row in (0, 1):
        hits = correct[row].nonzero().ravel().tolist()
        assert len(hits) == 1
        span_ids = inputs["input_ids"][row, starts[hits[0]]:ends[hits[0]] + 1].tolist()
        assert tok.decode(span_ids) == "denver broncos"
    assert correct[0].any() and correct[2].any()


def test_collate_refuses_unequal_blocks(tok: WordPieceTokenizer) -> None:
    cfg = ReaderConfig(bert=BertConfig())
    with_neg = build_examples(tok, ARTICLES[:1], cfg, 64, 16, negatives=1, seed=0)
    without = build_examples(tok, ARTICLES[1:], cfg, 64, 16, negatives=0, seed=0)
    with pytest.raises(ValueError, match="same number of blocks"):
        collate(tok, [with_neg[0], without[0]], 64, cfg.max_span_width)


def test_heldout_split_keeps_whole_articles() -> None:
    train, held = split_heldout(ARTICLES, 1, seed=3)
    assert len(held) == 1 and len(train) == 1
    assert {a["title"] for a in train} | {a["title"] for a in held} == {"A", "B"}
