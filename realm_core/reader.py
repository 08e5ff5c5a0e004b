"""REALM's span reader (Guu et al. 2020 §3.4; HF ``RealmReader`` and ``RealmReaderProjection``).

Every span of up to ``max_span_width`` wordpieces inside the block part of ``[CLS] q [SEP] block [SEP]``
is scored from a start and an end representation; the relevance score of the block is added; the best
(block, span) wins. Parameter names follow the HF checkpoint keys ``reader.realm.*`` and
``reader.qa_outputs.*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from realm_core.bert import BertConfig, BertModel


@dataclass(frozen=True)
class ReaderConfig:
    bert: BertConfig
    span_hidden_size: int = 256  # REALM / HF RealmConfig.span_hidden_size
    max_span_width: int = 10  # wordpieces
    reader_layer_norm_eps: float = 1e-3  # HF RealmConfig.reader_layer_norm_eps, not BERT's 1e-12
    # Multiplies the relevance score before it is added to span scores. REALM adds the raw inner
    # product (1.0); cosine-scored embedders such as MiniLM need a larger weight to matter.
    relevance_scale: float = 1.0


def span_candidates(seq_len: int, max_span_width: int, device: torch.device | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """All spans of width 1..max_span_width in width-major order (HF ``RealmReader.span_candidates``).

    Returns:
        starts, ends: (num_spans,) int64 token positions, end inclusive; num_spans = Σ_w (seq_len − w + 1).
    """
    widths = range(1, min(max_span_width, seq_len) + 1)
    starts = torch.cat([torch.arange(0, seq_len - w + 1, device=device) for w in widths])
    ends = torch.cat([torch.arange(w - 1, seq_len, device=device) for w in widths])
    return starts, ends


class ReaderProjection(nn.Module):
    """Start/end projections → span score (HF ``RealmReaderProjection``)."""

    def __init__(self, config: ReaderConfig) -> None:
        super().__init__()
        self.dense_intermediate = nn.Linear(config.bert.hidden_size, config.span_hidden_size * 2)
        self.dense_output = nn.Linear(config.span_hidden_size, 1)
        self.layer_normalization = nn.LayerNorm(config.span_hidden_size, eps=config.reader_layer_norm_eps)

    def forward(self, hidden: torch.Tensor, max_span_width: int) -> torch.Tensor:
        """hidden: (batch, seq_len, hidden) → (batch, num_spans) scores of every span of width
        1..max_span_width, in :func:`span_candidates`' width-major order.

        score = Linear(LayerNorm(relu(start_proj[start] + end_proj[end]))) as in HF
        ``RealmReaderProjection.forward``. One width at a time: the spans of width w start at 0..T−w, so
        their start and end projections are two shifted slices, and the largest buffer is (B, T, S)
        instead of HF's (B, num_spans, S).
        """
        start_proj, end_proj = self.dense_intermediate(hidden).chunk(2, dim=-1)  # (B, T, S) each
        T = hidden.shape[1]
        out = []
        for w in range(1, min(max_span_width, T) + 1):
            x = (start_proj[:, : T - w + 1] + end_proj[:, w - 1 :]).relu_()  # (B, T−w+1, S)
            out.append(self.dense_output(self.layer_normalization(x)).squeeze(-1))  # (B, T−w+1)
        return torch.cat(out, dim=1)  # (B, C)

    def output_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LayerNorm + ``dense_output`` folded into one vector: (v (S,), sum(v) (), c ()) float32 with
        ``w · LN(x) + b = (v · x − mean(x) sum(v)) / sqrt(var(x) + eps) + c`` for every x (S,), where
        v = w ∘ γ and c = w · β + b (LN's biased variance). Quantized (int8) output layers give their
        dequantized weights."""
        lin: Any = self.dense_output  # nn.Linear, or a quantized Linear (weight() and bias() methods)
        weight, bias = lin.weight, lin.bias
        if callable(weight):
            weight, bias = weight().dequantize(), bias()
        w = weight.detach().float()[0]  # (S,)
        ln = self.layer_normalization
        v = w * ln.weight.detach().float()
        c = w @ ln.bias.detach().float() + (bias.detach().float()[0] if bias is not None else 0.0)
        return v, v.sum(), c

    def block_spans(self, hidden: torch.Tensor, max_span_width: int, chunk_starts: int = 256) -> torch.Tensor:
        """Scores of the spans that start at each token of a packed sequence (inference only: no autograd).

        ``hidden`` holds the block wordpieces of all rows one after the other (the only tokens a span HF
        ``mask_to_score`` leaves unmasked can touch), so question, special and padding tokens are neither
        projected nor scored. Spans are taken ``chunk_starts`` start positions at a time (all widths of a start
        together: a (chunk_starts, max_span_width, S) buffer, 2.6 MB at REALM's sizes, that stays in cache)
        through add, ReLU and three reductions (v · x, Σ x, ‖x‖): LayerNorm + ``dense_output`` are folded
        (:meth:`output_terms`), so the normalised tensor is never written. Same function as :meth:`forward` (HF
        ``RealmReaderProjection.forward``) up to float rounding of the sums (``tests/realm_core/test_reader.py``).

        Args:
            hidden: (N, hidden) encoder output of the packed block wordpieces.
            max_span_width: W, the widest span in wordpieces.

        Returns:
            (N, W) float32: entry [p, w − 1] is the score of the span of tokens p..p + w − 1. Entries of spans
            that run past their row's block (into the next row's, or past N) are finite and meaningless.
        """
        N, W = hidden.shape[0], max_span_width
        if N == 0:
            return hidden.new_zeros(0, W, dtype=torch.float32)
        proj = self.dense_intermediate(hidden).float()  # (N, 2S)
        S = proj.shape[1] // 2
        start = proj[:, :S]
        end = torch.cat([proj[:, S:], proj.new_zeros(W - 1, S)])  # (N + W − 1, S): windows past N read zeros
        ends = end.as_strided((N, W, S), (S, S, 1))  # ends[p, w − 1] = end projection of token p + w − 1
        v, v_sum, c = (t.to(proj.device) for t in self.output_terms())
        dot, total, norm = (proj.new_empty(N, W) for _ in range(3))  # v · x, Σ x, ‖x‖ of every span
        buf = proj.new_empty(min(chunk_starts, N), W, S)
        for p in range(0, N, chunk_starts):
            n = min(chunk_starts, N - p)
            x = torch.add(start[p:p + n, None], ends[p:p + n], out=buf[:n]).relu_()  # (n, W, S)
            # three reductions (a matrix product with 2 columns instead ran 4x slower than one mv here)
            torch.mv(x.view(n * W, S), v, out=dot.view(-1)[p * W:(p + n) * W])
            torch.sum(x, -1, out=total[p:p + n])
            torch.linalg.vector_norm(x, 2, dim=-1, out=norm[p:p + n])
        mean = total.div_(S)
        var = (norm.square_().div_(S) - mean.square()).clamp_min_(0.0)  # biased, as LayerNorm's
        eps = self.layer_normalization.eps
        return (dot - mean * v_sum).mul_(var.add_(eps).rsqrt_()).add_(c)


class SpanReader(nn.Module):
    """BERT + span head. ``forward`` gives masked span logits with the relevance score added."""

    def __init__(self, config: ReaderConfig) -> None:
        super().__init__()
        self.config = config
        self.realm = BertModel(config.bert)
        self.qa_outputs = ReaderProjection(config)

    def span_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unmasked span scores of every row (HF ``RealmReader.forward`` before ``mask_to_score``).

        Args:
            input_ids, attention_mask, token_type_ids: (rows, seq_len).

        Returns:
            scores: (rows, num_spans) in the reader's dtype; starts, ends: (num_spans,) as :func:`span_candidates`.
        """
        hidden = self.realm(input_ids, attention_mask, token_type_ids)  # (R, T, H)
        starts, ends = span_candidates(input_ids.shape[1], self.config.max_span_width, input_ids.device)
        return self.qa_outputs(hidden, self.config.max_span_width), starts, ends

    def block_span_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                          block_start: Sequence[int], block_len: Sequence[int]) -> torch.Tensor:
        """Scores of the spans wholly inside each row's block (inference; the rest HF masks), relevance
        score not added: :meth:`ReaderProjection.block_spans` over the encoder's output.

        Args:
            input_ids, attention_mask, token_type_ids: (rows, seq_len).
            block_start, block_len: per row, its first block wordpiece's position and their number.

        Returns:
            (Σ block_len, max_span_width) float32, laid out as :meth:`ReaderProjection.block_spans` says.
        """
        R, T = input_ids.shape
        lens = np.asarray(block_len, dtype=np.int64)
        row_first = np.arange(R) * T + np.asarray(block_start, dtype=np.int64) - np.cumsum(lens) + lens
        keep = torch.from_numpy(np.repeat(row_first, lens) + np.arange(int(lens.sum()))).to(input_ids.device)
        hidden = self.realm(input_ids, attention_mask, token_type_ids, keep=keep)  # (Σ block_len, H)
        return self.qa_outputs.block_spans(hidden, self.config.max_span_width)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        block_mask: torch.Tensor,
        relevance_score: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score every span of every row.

        Args:
            input_ids, attention_mask, token_type_ids: (rows, seq_len), rows = questions × reader beam.
            block_mask: (rows, seq_len) bool, True on block wordpieces.
            relevance_score: (rows,) relevance score of each row's block, or None for none.

        Returns:
            logits: (rows, num_spans) span score + relevance_scale × relevance score; spans not wholly
                inside the block get ``finfo.min`` added (HF ``mask_to_score``).
            starts, ends: (num_spans,) token positions of each span, end inclusive.
        """
        logits, starts, ends = self.span_scores(input_ids, attention_mask, token_type_ids)  # (R, C)
        span_mask = (block_mask[:, starts] & block_mask[:, ends]).to(logits.dtype)  # (R, C)
        logits = logits + (1.0 - span_mask) * torch.finfo(logits.dtype).min
        if relevance_score is not None:
            logits = logits + self.config.relevance_scale * relevance_score[:, None].to(logits.dtype)
        return logits, starts, ends


def select_spans(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the answer of each question from its reader beam (HF ``RealmForOpenQA.forward``).

    The reference takes two separate argmaxes: the block whose best span is best, and the span index
    whose best score over blocks is best. They agree with the global argmax except on exact ties, where
    each takes the first maximum; this function reproduces that rule.

    Args:
        logits: (questions, reader_beam, num_spans).

    Returns:
        block_idx, span_idx: (questions,) int64.
    """
    block_idx = logits.max(dim=2).values.argmax(dim=1)
    span_idx = logits.max(dim=1).values.argmax(dim=1)
    return block_idx, span_idx


def marginal_log_likelihood(logits: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Negative marginal log-likelihood of the correct spans (REALM §3.4, HF ``marginal_log_loss``).

    Args:
        logits: (questions, num_rows_spans) masked span logits, all candidates of a question flattened.
        correct: same shape, bool, True on every span that matches a reference answer.

    Returns:
        () mean over questions that have at least one correct span.
    """
    mask_min = torch.finfo(logits.dtype).min
    log_num = torch.logsumexp(logits + (~correct).to(logits.dtype) * mask_min, dim=-1)
    log_den = torch.logsumexp(logits, dim=-1)
    has = correct.any(dim=-1)
    return (log_den - log_num)[has].mean()


def reader_config_from_dict(d: dict) -> ReaderConfig:  # type: ignore[type-arg]
    """Inverse of ``dataclasses.asdict(ReaderConfig)``."""
    return ReaderConfig(**{**d, "bert": BertConfig.from_dict(d["bert"])})
