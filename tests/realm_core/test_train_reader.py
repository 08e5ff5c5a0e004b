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


def test_evaluate_gold_equals_each_question_alone() -> None:
    """The gold-paragraph evaluation (batched through realm_core.qa) scores each of 24 held-out questions as
    the plain path does for that question alone; the bundled reader gets some right and some wrong."""
    import json

    import torch

    from realm_core.evaluation import exact_match, f1_score
    from realm_core.model_dir import load_model_dir
    from realm_core.reader import select_spans
    from realm_core.train_reader import evaluate_gold

    m = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    heldout = json.loads((BUNDLED_MODEL.parents[2] / "heldout" / "squad-train-heldout.json").read_text())
    para = heldout["data"][0]["paragraphs"]
    articles = [{"title": "t", "paragraphs": [{**p, "qas": p["qas"][:3]} for p in para[:8]]}]
    items = [(qa["question"], p["context"], [a["text"] for a in qa["answers"]])
             for p in articles[0]["paragraphs"] for qa in p["qas"]]
    assert len(items) >= 20
    em = f1 = 0.0
    for q, ctx, refs in items:
        qp = m.reader_tokenizer.pieces([q])[0]
        enc = m.reader_tokenizer.encode_pairs([qp], m.reader_tokenizer.pieces([ctx]), m.reader_seq_len)
        with torch.no_grad():
            logits, starts, ends = m.reader(enc.input_ids, enc.attention_mask, enc.token_type_ids, enc.block_mask)
        _, span = select_spans(logits[:, None, :])
        pred = ctx[int(enc.block_offsets[0, starts[span[0]], 0]):int(enc.block_offsets[0, ends[span[0]], 1])]
        em += exact_match(pred, refs)
        f1 += f1_score(pred, refs)
    got = evaluate_gold(m.reader, m.reader_tokenizer, articles, m.reader_seq_len, m.max_question_tokens,
                        batch_size=7)
    assert got["questions"] == len(items)
    assert got["em"] == pytest.approx(100 * em / len(items))
    assert got["f1"] == pytest.approx(100 * f1 / len(items))
    assert 0 < em < len(items)
