"""realm_core.reader: span enumeration, span masking, relevance, answer selection, the marginal
log-likelihood, and batched against row-by-row forward on a tiny random reader."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from realm_core.bert import BertConfig
from realm_core.reader import (
    ReaderConfig,
    ReaderProjection,
    SpanReader,
    marginal_log_likelihood,
    reader_config_from_dict,
    select_spans,
    span_candidates,
)

torch.set_num_threads(1)

CLS, SEP, PAD = 1, 2, 0
TINY = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, hidden_act="gelu_new", max_position_embeddings=64)
MASKED = -1e30  # masked span logits are finfo.min, far below this


def _pairs(starts: torch.Tensor, ends: torch.Tensor) -> list[tuple[int, int]]:
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _reader(**overrides: float) -> SpanReader:
    torch.manual_seed(0)
    return SpanReader(ReaderConfig(bert=TINY, span_hidden_size=8, **overrides)).eval()  # type: ignore[arg-type]


def _rows(layout: list[tuple[int, int]], seq_len: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Hand-built reader inputs ``[CLS] q [SEP] block [SEP] [PAD]...`` for (question_len, block_len) rows."""
    g = torch.Generator().manual_seed(seed)
    n = len(layout)
    input_ids = torch.full((n, seq_len), PAD)
    attention_mask = torch.zeros((n, seq_len), dtype=torch.long)
    token_type_ids = torch.zeros((n, seq_len), dtype=torch.long)
    block_mask = torch.zeros((n, seq_len), dtype=torch.bool)
    for r, (q, b) in enumerate(layout):
        words = torch.randint(3, TINY.vocab_size, (q + b,), generator=g).tolist()
        row = [CLS, *words[:q], SEP, *words[q:], SEP]
        input_ids[r, : len(row)] = torch.tensor(row)
        attention_mask[r, : len(row)] = 1
        token_type_ids[r, q + 2 : len(row)] = 1
        block_mask[r, q + 2 : q + 2 + b] = True
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                block_mask=block_mask)


# --- span_candidates -------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [10, 11, 37])
def test_span_candidates_count_and_order(seq_len: int) -> None:
    starts, ends = span_candidates(seq_len, 10)
    assert starts.shape == ends.shape == (10 * seq_len - 45,)
    assert starts.dtype == ends.dtype == torch.int64
    want = [(s, s + w - 1) for w in range(1, 11) for s in range(seq_len - w + 1)]  # width-major
    assert _pairs(starts, ends) == want
    widths = ends - starts + 1
    assert (widths[1:] >= widths[:-1]).all()


def test_span_candidates_shorter_than_width() -> None:
    starts, ends = span_candidates(4, 10)
    assert _pairs(starts, ends) == [(s, s + w - 1) for w in range(1, 5) for s in range(5 - w)]
    assert len(starts) == 10


# --- select_spans ----------------------------------------------------------------------------------


def _hf_select(reader_logits: torch.Tensor) -> tuple[int, int]:
    """HF ``RealmForOpenQA.forward`` on one question's (reader_beam, num_spans) logits."""
    block = torch.argmax(torch.max(reader_logits, dim=1).values)
    span = torch.argmax(torch.max(reader_logits, dim=0).values)
    return int(block), int(span)


def test_select_spans_hand_made() -> None:
    logits = torch.tensor([
        [[0.0, 1, 2, 3], [0, 9, 1, 1]],  # clear maximum: block 1, span 1
        [[0.0, 5, 0, 0], [0, 5, 0, 0]],  # same span ties across blocks: the first block
        [[1.0, 7, 7, 0], [0, 0, 0, 0]],  # tie inside one block: the first span
        # Maxima in different blocks and spans: each argmax takes its first maximum, so the pair
        # (block 0, span 0) is not itself a maximum — HF's two-argmax rule, kept on purpose.
        [[0.0, 5, 0, 0], [5, 0, 0, 0]],
    ])
    block, span = select_spans(logits)
    assert block.tolist() == [1, 0, 0, 0]
    assert span.tolist() == [1, 1, 1, 0]
    assert block.dtype == span.dtype == torch.int64


def test_select_spans_matches_hf_rule_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (200, 3, 5), generator=g).float()  # many exact ties
    block, span = select_spans(logits)
    assert _pairs(block, span) == [_hf_select(q) for q in logits]


# --- SpanReader ------------------------------------------------------------------------------------


def test_spans_outside_block_are_masked_and_never_selected() -> None:
    reader = _reader()
    inputs = _rows([(3, 5), (2, 9), (4, 2), (1, 1)], seq_len=16)
    with torch.no_grad():
        logits, starts, ends = reader(**inputs)
    assert logits.shape == (4, len(starts))
    bm = inputs["block_mask"]
    inside = bm[:, starts] & bm[:, ends]  # (rows, num_spans)
    assert (logits[~inside] < MASKED).all()
    assert torch.isfinite(logits[inside]).all() and (logits[inside] > MASKED).all()
    assert inside.sum(1).tolist() == [15, 45, 3, 1]  # Σ_w (b − w + 1) for b = 5, 9, 2, 1
    _, span = select_spans(logits[:, None, :])
    for r in range(4):
        assert bm[r, starts[span[r]]] and bm[r, ends[span[r]]]
    block, span = select_spans(logits.view(2, 2, -1))  # 2 questions × reader beam 2
    for q in range(2):
        r = 2 * q + int(block[q])
        assert bm[r, starts[span[q]]] and bm[r, ends[span[q]]]


def test_relevance_score_added_with_scale() -> None:
    reader = _reader(relevance_scale=2.5)
    inputs = _rows([(3, 5), (2, 9)], seq_len=14)
    score = torch.tensor([0.7, -1.3])
    with torch.no_grad():
        plain, starts, ends = reader(**inputs)
        scored, _, _ = reader(**inputs, relevance_score=score)
    inside = inputs["block_mask"][:, starts] & inputs["block_mask"][:, ends]
    diff = scored - plain
    want = (2.5 * score)[:, None].expand_as(diff)
    assert torch.allclose(diff[inside], want[inside], atol=1e-5)
    assert (scored[~inside] < MASKED).all()


def test_batched_equals_row_by_row() -> None:
    """Rows padded to a common (and a larger) length give the span logits of each row alone."""
    reader = _reader()
    layout = [(3, 5), (2, 9), (4, 2)]
    with torch.no_grad():
        for seq_len in (14, 20):
            batch = _rows(layout, seq_len)
            logits, starts, ends = reader(**batch)
            index = {span: c for c, span in enumerate(_pairs(starts, ends))}
            for r, (q, b) in enumerate(layout):
                n = q + b + 3
                alone = {k: v[r : r + 1, :n] for k, v in batch.items()}
                row_logits, row_starts, row_ends = reader(**alone)
                cols = torch.tensor([index[span] for span in _pairs(row_starts, row_ends)])
                got, want = logits[r, cols], row_logits[0]
                inside = want > MASKED
                assert ((got > MASKED) == inside).all()
                assert (got[inside] - want[inside]).abs().max().item() <= 1e-5
                # Spans reaching into the padding exist only in the batch and are all masked.
                extra = torch.ones(len(starts), dtype=torch.bool)
                extra[cols] = False
                assert (logits[r, extra] < MASKED).all()


def _hf_projection(proj: ReaderProjection, hidden: torch.Tensor, max_span_width: int) -> torch.Tensor:
    """HF ``RealmReaderProjection.forward`` as written there: every candidate span gathered at once,
    ``dense_output(layer_normalization(relu(start + end)))`` → (rows, num_spans)."""
    starts, ends = span_candidates(hidden.shape[1], max_span_width)
    start_proj, end_proj = proj.dense_intermediate(hidden).chunk(2, dim=-1)
    x = torch.relu(start_proj.index_select(1, starts) + end_proj.index_select(1, ends))
    return proj.dense_output(proj.layer_normalization(x)).squeeze(-1)


@pytest.mark.parametrize("seed", range(4))
def test_block_spans_equal_hf_projection(seed: int) -> None:
    """The packed, chunked, LayerNorm-folded span head gives HF's score for every span inside a block (blocks
    of 1 to 40 wordpieces, shorter and longer than max_span_width, at any offset, ending at the last token),
    with random LayerNorm weights and hidden states far from zero mean (cancellation in mean and variance)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    proj = ReaderProjection(ReaderConfig(bert=TINY, span_hidden_size=24)).eval()
    with torch.no_grad():
        proj.layer_normalization.weight.normal_(1.0, 0.5, generator=g)
        proj.layer_normalization.bias.normal_(0.0, 0.5, generator=g)
        proj.dense_output.bias.fill_(0.3)
    T = 48
    block_start = [0, 3, 7, 1, 46, 20, 5]
    block_len = [1, 9, 41, 10, 2, 28, 4]
    hidden = torch.randn(len(block_start), T, TINY.hidden_size, generator=g) * 3 + 2
    with torch.no_grad():
        want = _hf_projection(proj, hidden, 10)  # (rows, num_spans)
        plain = proj(hidden, 10)
        assert (plain - want).abs().max().item() <= 1e-5  # our width-at-a-time forward, too
        starts, ends = span_candidates(T, 10)
        index = {span: c for c, span in enumerate(_pairs(starts, ends))}
        packed = torch.cat([hidden[r, bs:bs + bl] for r, (bs, bl) in enumerate(zip(block_start, block_len))])
        for chunk in (1, 3, 32, 1000):
            got = proj.block_spans(packed, 10, chunk)
            assert got.shape == (sum(block_len), 10) and got.dtype == torch.float32
            p = 0
            for r, (bs, bl) in enumerate(zip(block_start, block_len, strict=True)):
                for i in range(bl):
                    for w in range(1, min(10, bl - i) + 1):
                        y = float(want[r, index[(bs + i, bs + i + w - 1)]])
                        assert abs(float(got[p + i, w - 1]) - y) <= 1e-5 * max(1.0, abs(y))
                p += bl
            assert torch.isfinite(got).all()


def test_block_spans_of_no_block_token() -> None:
    proj = ReaderProjection(ReaderConfig(bert=TINY, span_hidden_size=8)).eval()
    with torch.no_grad():
        got = proj.block_spans(torch.randn(0, TINY.hidden_size), 10)
    assert got.shape == (0, 10)


def test_block_span_scores_equal_masked_forward() -> None:
    """The encoder's last layer run on block tokens only (``keep``) + the packed span head give the
    unmasked spans of the plain forward, for rows padded to a common length."""
    reader = _reader()
    layout = [(3, 5), (2, 9), (4, 1), (1, 12)]
    inputs = _rows(layout, seq_len=20)
    block_start = [q + 2 for q, _ in layout]
    block_len = [b for _, b in layout]
    with torch.no_grad():
        want, starts, ends = reader(**inputs)
        got = reader.block_span_scores(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"],
                                       block_start, block_len)
        hidden = reader.realm(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
        keep = torch.cat([r * 20 + torch.arange(bs, bs + bl) for r, (bs, bl) in enumerate(zip(block_start, block_len))])
        kept = reader.realm(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], keep=keep)
    assert (kept - hidden.reshape(-1, TINY.hidden_size)[keep]).abs().max().item() <= 1e-5
    index = {span: c for c, span in enumerate(_pairs(starts, ends))}
    p, n = 0, 0
    for r, (bs, bl) in enumerate(zip(block_start, block_len)):
        for i in range(bl):
            for w in range(1, min(10, bl - i) + 1):
                assert abs(float(got[p + i, w - 1]) - float(want[r, index[(bs + i, bs + i + w - 1)]])) <= 1e-5
                n += 1
        p += bl
    assert n == int((want > MASKED).sum())


def test_output_terms_of_a_quantized_output_layer() -> None:
    """An int8 ``dense_output`` (torch.ao dynamic) folds its dequantized weights: the folded form equals
    LayerNorm then a float Linear holding those weights."""
    torch.manual_seed(0)
    proj = ReaderProjection(ReaderConfig(bert=TINY, span_hidden_size=16)).eval()
    q = torch.ao.quantization.quantize_dynamic(proj, {torch.nn.Linear}, dtype=torch.qint8)
    v, v_sum, c = q.output_terms()
    lin = torch.nn.Linear(16, 1)
    with torch.no_grad():
        lin.weight.copy_(q.dense_output.weight().dequantize())
        lin.bias.copy_(q.dense_output.bias())
        x = torch.relu(torch.randn(50, 16))
        want = lin(proj.layer_normalization(x))[:, 0]
        mean, var = x.mean(-1), x.var(-1, unbiased=False)
        got = (x @ v - mean * v_sum) / torch.sqrt(var + proj.layer_normalization.eps) + c
    assert (got - want).abs().max().item() <= 1e-5


def test_reader_config_round_trip() -> None:
    cfg = ReaderConfig(bert=TINY, span_hidden_size=8, relevance_scale=3.0)
    assert reader_config_from_dict(dataclasses.asdict(cfg)) == cfg


# --- marginal_log_likelihood -----------------------------------------------------------------------


def test_marginal_log_likelihood_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, generator=g)
    mask_min = torch.finfo(logits.dtype).min
    logits[0, 5:] = mask_min  # masked spans, as SpanReader emits them
    logits[1, 0] = mask_min
    correct = torch.zeros(3, 7, dtype=torch.bool)
    correct[0, [1, 4]] = True
    correct[1, 3] = True  # row 2: no correct span, left out of the mean
    logits.requires_grad_(True)
    loss = marginal_log_likelihood(logits, correct)

    x = logits.detach()
    want = torch.stack([
        torch.logsumexp(x[0, :5], 0) - torch.logsumexp(x[0, [1, 4]], 0),
        torch.logsumexp(x[1, 1:], 0) - x[1, 3],
    ]).mean()
    assert loss.shape == ()
    assert torch.allclose(loss, want, atol=1e-6)
    assert torch.allclose(marginal_log_likelihood(x[:2], correct[:2]), want, atol=1e-6)

    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad[2] == 0).all()  # the excluded question gets no gradient
    # Gradient of −log p(correct): softmax over all spans minus softmax over the correct ones, / 2 questions.
    p_all = torch.softmax(x[0, :5], 0)
    p_cor = torch.zeros(5)
    p_cor[[1, 4]] = torch.softmax(x[0, [1, 4]], 0)
    assert torch.allclose(logits.grad[0, :5], (p_all - p_cor) / 2, atol=1e-6)


def test_marginal_log_likelihood_all_correct_is_zero() -> None:
    logits = torch.randn(2, 6, generator=torch.Generator().manual_seed(1))
    loss = marginal_log_likelihood(logits, torch.ones(2, 6, dtype=torch.bool))
    assert abs(loss.item()) < 1e-6
