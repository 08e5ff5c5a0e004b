"""REALM's reading rules on plain data (Guu et al. 2020 §3.4; HF ``RealmForOpenQA.forward``).

question wordpieces + the question's reader beam (each block's text, relevance score and, where the block
store keeps them, its wordpieces) → reader rows ``[CLS] question [SEP] block [SEP]`` cut by the model's
truncation rule → masked span logits → best span of each block → character offsets → the answer.

:func:`read_beams` reads the reader beams of a whole batch of questions together: every row (questions ×
reader beam) is sorted by length and cut into reader passes of at most ``max_pass_tokens`` padded tokens,
each padded to its longest row, where the padding costs less than another pass (:func:`plan_passes`).
Padding is masked out of attention, so a row's span scores do not depend on its group; they are then laid
out as HF lays out one question's reader beam (its rows padded to the longest of that question, spans
width-major, :func:`realm_core.reader.span_candidates`), so :func:`answer` applies HF's selection rule, ties
included, to the same logits as reading one question at a time.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch

from realm_core.reader import SpanReader, span_candidates
from realm_core.tokenizer import PairBatch, PairRow, Pieces, WordPieceTokenizer

MASKED = torch.finfo(torch.float32).min  # a span not wholly inside the block (HF ``mask_to_score``)
# Padded tokens per reader pass: small passes keep a pass's activations in the CPU's caches (tiny REALM at
# batch 32, 2 cores: 2,048 tokens 21.0 ms per question, 8,192 21.7, 65,536 24.9; bench/README.md).
MAX_PASS_TOKENS = 2048


def pass_overhead_tokens(hidden_size: int) -> int:
    """A reader pass's fixed cost (Python, one call per module, small matrix products) in tokens of encoder work,
    for :func:`plan_passes`: 2²¹ / hidden², within [32, 1024]. The fixed cost is about the same for any width and
    a token's work grows with hidden², so narrow readers pad more rows into one pass: 32 for MiniLM and BERT-base
    (hidden 384, 768), 512 for the tiny REALM of the tests (hidden 64). Measured on 2 CPU cores, in process
    (bench/README.md, "Reader passes"): tiny REALM 6.9–8.0 → 5.6 ms a question one at a time and 3.4–3.7 →
    3.2 ms at batch 32 against the earlier rule (≤ 12.5% padding a row); MiniLM within run-to-run noise."""
    return min(1024, max(32, round(2**21 / hidden_size**2)))


class QuestionError(ValueError):
    """A question the reader cannot read (no wordpieces, or more than the model allows)."""


@dataclass(frozen=True)
class BeamBlock:
    """One retrieved block as the reader needs it."""

    text: str
    relevance: float  # relevance score: inner product of query and block embeddings
    pieces: Pieces | None = None  # the block's wordpieces if stored at index build time; None: tokenised here


@dataclass(frozen=True)
class SpanChoice:
    """A span of one block of the reader beam."""

    row: int  # the block's position in the question's reader beam
    score: float  # span score + relevance_scale × relevance score (REALM §3.4)
    start_char: int  # in the block text, end exclusive
    end_char: int
    text: str  # block_text[start_char:end_char]


@dataclass
class QAResult:
    best: SpanChoice  # HF ``RealmForOpenQA``'s answer
    per_block: list[SpanChoice]  # the best span of each block, in reader-beam order


@dataclass
class Reading:
    """One question's reader beam as the reader scored it.

    Each row keeps the span scores of its own reader pass: ``row_scores[r]`` (num_spans of a row of
    ``pass_len[r]`` tokens,) float32 in :func:`span_candidates`' width-major order, ``MASKED`` where a span is
    not wholly inside the block, the relevance score not added. Spans are ordered by (width, start) in every
    layout, so :func:`answer` applies HF's rule to these directly; :attr:`span_logits` lays them out as HF
    ``RealmReader`` does for one question (its rows padded to its longest row), for comparisons with HF.
    """

    blocks: list[BeamBlock]
    rows: list[PairRow]
    row_scores: list[torch.Tensor]
    pass_len: list[int]
    max_span_width: int
    padded_tokens: int = 0  # tokens its rows took in their reader passes, padding included

    @cached_property
    def _layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        T_q = max(len(r) for r in self.rows)
        starts, ends = span_candidates(T_q, self.max_span_width)
        out = torch.full((len(self.rows), len(starts)), MASKED)
        for j, (scores, T) in enumerate(zip(self.row_scores, self.pass_len)):
            dst, src = _span_map(T, T_q, self.max_span_width)
            out[j, dst] = scores[src]
        return out, starts, ends

    @property
    def span_logits(self) -> torch.Tensor:
        """(reader_beam, num_spans) float32 span scores in HF ``RealmReader``'s layout for this question (rows
        padded to its longest row), ``MASKED`` where a span is not wholly inside the block; no relevance score."""
        return self._layout[0]

    @property
    def starts(self) -> torch.Tensor:
        """(num_spans,) token position of each span of :attr:`span_logits` (:func:`span_candidates`)."""
        return self._layout[1]

    @property
    def ends(self) -> torch.Tensor:
        """(num_spans,) token position of each span's last wordpiece (end inclusive)."""
        return self._layout[2]

    def relevance_terms(self, relevance_scale: float) -> torch.Tensor:
        """(reader_beam,) float32 ``relevance_scale`` × relevance score of each block."""
        return relevance_scale * torch.tensor([b.relevance for b in self.blocks], dtype=torch.float32)

    def logits(self, relevance_scale: float) -> torch.Tensor:
        """(reader_beam, num_spans) span score + ``relevance_scale`` × relevance score (HF ``RealmReader``:
        ``relevance_score.unsqueeze(-1) + reader_logits``), in :attr:`span_logits`' layout."""
        return self.span_logits + self.relevance_terms(relevance_scale)[:, None]

    def inputs(self, tokenizer: WordPieceTokenizer) -> PairBatch:
        """The rows padded as HF pads one question's reader beam (to its longest row)."""
        return tokenizer.pad_pairs(self.rows)

    def char_span(self, row: int, start: int, end: int) -> tuple[int, int]:
        """(start_char, end_char) in row ``row``'s block text of the span of tokens ``start..end`` (end
        inclusive, positions in the row); (0, 0) for a span outside the block (only an exact tie across
        blocks can pick one, see :func:`answer`)."""
        r = self.rows[row]
        s, e = start - r.block_start, end - r.block_start
        if not (0 <= s <= e < len(r.block_offsets)):
            return 0, 0
        return r.block_offsets[s][0], r.block_offsets[e][1]


@dataclass
class BatchReading:
    readings: list[Reading]  # one per question, in order
    pass_rows: list[int]  # rows of each reader pass
    tokens: int  # tokens in all rows, padding excluded
    padded_tokens: int  # tokens the reader passes computed, padding included


def question_pieces(tokenizer: WordPieceTokenizer, questions: Sequence[str], max_question_tokens: int
                    ) -> list[Pieces]:
    """Wordpieces of each question, checked.

    Raises:
        QuestionError: a question with no wordpieces or more than ``max_question_tokens``.
    """
    pieces = tokenizer.pieces(questions)
    for p in pieces:
        if not p.ids:
            raise QuestionError("question has no tokens")
        if len(p.ids) > max_question_tokens:
            raise QuestionError(f"question has {len(p.ids)} tokens, more than the {max_question_tokens} allowed")
    return pieces


def plan_passes(lengths: Sequence[int], max_pass_tokens: int, overhead_tokens: int) -> list[list[int]]:
    """Reader passes for rows of the given lengths (tokens): lists of row numbers, longest rows first.

    Rows sorted longest first are cut into runs; a run is one pass, padded to its first (longest) row ``T``,
    and costs ``overhead_tokens + rows × T`` (a pass's fixed cost, counted in tokens of encoder work, plus
    its padded tokens). The cut of least total cost is found exactly by dynamic programming over the sorted
    rows, under the bound ``rows × T ≤ max_pass_tokens`` (a single row longer than that gets a pass of its own):
    few rows make one pass even where padding is needed, many rows split where padding would cost more than a
    pass.

    Args:
        lengths: tokens of each row.
        max_pass_tokens: the most padded tokens in one pass.
        overhead_tokens: a pass's fixed cost in tokens (≥ 0; 0 never pads; :func:`pass_overhead_tokens`).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    L = [lengths[i] for i in order]
    n = len(L)
    best = [0] * (n + 1)  # best[i]: least cost of rows order[:i]
    cut = [0] * (n + 1)  # where the last pass of that best plan starts
    for i in range(1, n + 1):
        best[i] = best[i - 1] + overhead_tokens + L[i - 1]
        cut[i] = i - 1
        for j in range(i - 2, -1, -1):  # the pass order[j:i], padded to L[j]
            if (i - j) * L[j] > max_pass_tokens:
                break  # earlier j only add rows and length
            c = best[j] + overhead_tokens + (i - j) * L[j]
            if c < best[i]:
                best[i], cut[i] = c, j
    passes: list[list[int]] = []
    i = n
    while i > 0:
        passes.append(order[cut[i]:i])
        i = cut[i]
    return passes[::-1]


@lru_cache(maxsize=4096)
def _span_map(t_from: int, t_to: int, max_span_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the spans of a row padded to ``t_from`` tokens go in the layout of ``t_to`` tokens: (dst, src)
    int64 positions, spans present in both (width-major, :func:`span_candidates`)."""
    dst: list[int] = []
    src: list[int] = []
    off_from = off_to = 0
    for w in range(1, min(max_span_width, t_to) + 1):
        n_from, n_to = max(t_from - w + 1, 0), t_to - w + 1
        k = min(n_from, n_to)
        dst.extend(range(off_to, off_to + k))
        src.extend(range(off_from, off_from + k))
        off_from, off_to = off_from + n_from, off_to + n_to
    return torch.tensor(dst, dtype=torch.long), torch.tensor(src, dtype=torch.long)


@lru_cache(maxsize=4096)
def _width_offsets(seq_len: int, max_span_width: int) -> tuple[int, ...]:
    """Index of the first span of each width 1..max_span_width in :func:`span_candidates`' order."""
    offs = [0]
    for w in range(1, min(max_span_width, seq_len) + 1):
        offs.append(offs[-1] + seq_len - w + 1)
    return tuple(offs)


def _span_at(index: int, seq_len: int, max_span_width: int) -> tuple[int, int]:
    """(width, start) of span ``index`` of a row of ``seq_len`` tokens (:func:`span_candidates`' order)."""
    offs = _width_offsets(seq_len, max_span_width)
    w = bisect_right(offs, index)
    return w, index - offs[w - 1]


def _index_of(width: int, start: int, seq_len: int, max_span_width: int) -> int | None:
    """Inverse of :func:`_span_at`; None where the span does not fit in ``seq_len`` tokens."""
    if width > min(max_span_width, seq_len) or start + width > seq_len:
        return None
    return _width_offsets(seq_len, max_span_width)[width - 1] + start


def _row_layout(packed: torch.Tensor, block_start: Sequence[int], block_len: Sequence[int], seq_len: int,
                max_span_width: int) -> torch.Tensor:
    """The block-span scores of :meth:`realm_core.reader.SpanReader.block_span_scores` ((Σ block_len, W))
    laid out per row as :func:`span_candidates` orders a row of ``seq_len`` tokens: (rows, num_spans)
    float32, ``MASKED`` where a span is not wholly inside the block (HF ``mask_to_score``)."""
    W = max_span_width
    lens = np.asarray(block_len, dtype=np.int64)
    offs = np.asarray(_width_offsets(seq_len, W), dtype=np.int64)
    Wt = len(offs) - 1  # widths that fit in seq_len tokens
    out = torch.full((len(lens), int(offs[-1])), MASKED)
    N = int(lens.sum())
    row = np.repeat(np.arange(len(lens)), lens)  # (N,) the row of each packed block wordpiece
    i = np.arange(N) - np.repeat(np.cumsum(lens) - lens, lens)  # its position in its block
    w = np.arange(Wt)[None, :]  # width − 1
    live = i[:, None] + w < lens[row][:, None]  # (N, Wt) spans that stay inside the block
    dst = row[:, None] * int(offs[-1]) + offs[None, :Wt] + (np.asarray(block_start, dtype=np.int64)[row] + i)[:, None]
    src = np.arange(N)[:, None] * W + w
    out.view(-1)[torch.from_numpy(dst[live])] = packed.reshape(-1)[torch.from_numpy(src[live])]
    return out


@torch.no_grad()
def read_beams(
    reader: SpanReader,
    tokenizer: WordPieceTokenizer,
    questions: Sequence[Pieces],
    beams: Sequence[Sequence[BeamBlock]],
    seq_len: int,
    truncation: str = "only_block",
    max_pass_tokens: int = MAX_PASS_TOKENS,
    overhead_tokens: int | None = None,
) -> BatchReading:
    """Score every span of every block of every question's reader beam, in length-grouped reader passes.

    Args:
        reader: the span reader (its dtype and device are used as they are; logits come back float32 on the CPU).
        questions: the reader's wordpieces of each question.
        beams: per question, its blocks (the reader beam), best first.
        seq_len: the most tokens in a row (REALM ``reader_seq_len``).
        truncation: a key of :data:`realm_core.tokenizer.TRUNCATIONS`.
        max_pass_tokens: the most padded tokens in one reader pass.
        overhead_tokens: a pass's fixed cost in tokens (:func:`plan_passes`); None: the reader's
            (:func:`pass_overhead_tokens` of its hidden size).

    Raises:
        ValueError: a question with an empty beam, unequal lengths, an unknown truncation, or a question
            that leaves no room for a block token.
    """
    if len(questions) != len(beams):
        raise ValueError(f"{len(questions)} questions but {len(beams)} reader beams")
    if any(not b for b in beams):
        raise ValueError("a question has no block to read")
    blocks = [b for beam in beams for b in beam]
    missing = [i for i, b in enumerate(blocks) if b.pieces is None]
    tokenized = iter(tokenizer.pieces([blocks[i].text for i in missing]))
    pieces = [b.pieces if b.pieces is not None else next(tokenized) for b in blocks]
    rows = tokenizer.pair_rows([q for q, beam in zip(questions, beams) for _ in beam], pieces, seq_len, truncation)

    device = next(reader.parameters()).device
    W = reader.config.max_span_width
    row_scores: list[torch.Tensor] = [torch.empty(0)] * len(rows)  # (num_spans of its pass,) float32
    row_len = [0] * len(rows)  # the length of each row's pass
    if overhead_tokens is None:
        overhead_tokens = pass_overhead_tokens(reader.config.bert.hidden_size)
    passes = plan_passes([len(r) for r in rows], max_pass_tokens, overhead_tokens)
    padded = 0
    for p in passes:
        enc = tokenizer.pad_pairs([rows[i] for i in p])
        T = enc.input_ids.shape[1]
        padded += T * len(p)
        block_start = [rows[i].block_start for i in p]
        block_len = [len(rows[i].block_offsets) for i in p]
        packed = reader.block_span_scores(enc.input_ids.to(device), enc.attention_mask.to(device),
                                          enc.token_type_ids.to(device), block_start, block_len)
        logits = _row_layout(packed.float().cpu(), block_start, block_len, T, W)  # (rows, C)
        for j, i in enumerate(p):
            row_scores[i], row_len[i] = logits[j], T

    readings = []
    first = 0
    for beam in beams:
        idx = range(first, first + len(beam))
        first += len(beam)
        readings.append(Reading(list(beam), [rows[i] for i in idx], [row_scores[i] for i in idx],
                                [row_len[i] for i in idx], W, sum(row_len[i] for i in idx)))
    return BatchReading(readings, [len(p) for p in passes], sum(len(r) for r in rows), padded)


def answer(reading: Reading, relevance_scale: float) -> QAResult:
    """The answer to one question and the best span of each block (REALM §3.4, HF ``RealmForOpenQA.forward``).

    The answer is HF's pair of argmaxes (:func:`realm_core.reader.select_spans`) over
    :meth:`Reading.logits`, taken from each row's own scores: the block is the first whose best span is the
    best, the span the first (in width-major order) that reaches that score in any block. On an exact tie of
    two blocks' best spans this can name a span of the first block that lies outside it; that span then has
    no characters (start_char = end_char = 0).
    """
    W = reading.max_span_width
    rel = reading.relevance_terms(relevance_scale)  # (B,)
    best: list[tuple[float, int, int]] = []  # per row: (score, width, start)
    for scores, T, r in zip(reading.row_scores, reading.pass_len, rel):
        v, i = (scores + r).max(dim=0)  # first maximum, as torch.max and HF's argmax
        best.append((float(v), *_span_at(int(i), T, W)))

    def choice(row: int, score: float, width: int, start: int) -> SpanChoice:
        s, e = reading.char_span(row, start, start + width - 1)
        return SpanChoice(row, score, s, e, reading.blocks[row].text[s:e])

    top = max(v for v, _, _ in best)
    bi = next(b for b, (v, _, _) in enumerate(best) if v == top)
    w, st = min((w, st) for v, w, st in best if v == top)
    if (w, st) == best[bi][1:]:
        score = top
    else:  # an exact tie with another block: HF names this span of block bi
        at = _index_of(w, st, reading.pass_len[bi], W)
        score = float((reading.row_scores[bi][at] if at is not None else torch.tensor(MASKED)) + rel[bi])
    return QAResult(choice(bi, score, w, st), [choice(b, v, wb, sb) for b, (v, wb, sb) in enumerate(best)])
