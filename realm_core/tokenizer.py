"""WordPiece tokenization over the ``tokenizers`` library, and the reader's pair layout.

Texts are tokenized without special tokens; the ``[CLS] question [SEP] block [SEP]`` layout is then
assembled from the pieces (as HF ``build_inputs_with_special_tokens``), so that block encodings can be
reused and the character offset of every block wordpiece is known.

How a (question, block) pair is cut to ``max_length`` is a strategy named by a key of ``TRUNCATIONS``:
``"only_block"`` (realmqa's own models: the question stays whole) or ``"longest_first"`` (REALM: the
rule the ``tokenizers`` library applies for HF ``RealmRetriever.__call__``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer


@dataclass(frozen=True)
class Pieces:
    """One text as wordpieces: ids and (start_char, end_char) offsets into the text, end exclusive."""

    ids: list[int]
    offsets: list[tuple[int, int]]


@dataclass
class TextBatch:
    """Padded single-segment inputs ``[CLS] text [SEP]``; every tensor is (batch, seq_len)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor


@dataclass(frozen=True)
class PairRow:
    """One unpadded reader row ``[CLS] question [SEP] block [SEP]``.

    ids: the row's wordpiece ids, special tokens included; the block's wordpieces are
    ``ids[block_start:block_end]``, with ``block_offsets`` their (start_char, end_char) in the block text.
    """

    ids: list[int]
    block_start: int
    block_offsets: list[tuple[int, int]]

    @property
    def block_end(self) -> int:
        return self.block_start + len(self.block_offsets)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PairBatch:
    """Padded reader inputs ``[CLS] question [SEP] block [SEP] [PAD]...``.

    input_ids, attention_mask, token_type_ids, block_mask: (batch, seq_len); block_mask is True on block
    wordpieces only (HF ``RealmForOpenQA``: not special, token type 1).
    block_offsets: (batch, seq_len, 2) int64 character offsets into the block text of each block
    wordpiece, -1 elsewhere.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    block_mask: torch.Tensor
    rows: Sequence[PairRow] = field(repr=False)

    @cached_property
    def block_offsets(self) -> torch.Tensor:
        """(batch, seq_len, 2) int64, built on first use (a reader pass does not need it)."""
        out = torch.full((*self.input_ids.shape, 2), -1, dtype=torch.long)
        for i, r in enumerate(self.rows):
            if r.block_offsets:
                out[i, r.block_start : r.block_end] = torch.tensor(r.block_offsets)
        return out


def truncate_only_block(question_len: int, block_len: int, budget: int) -> tuple[int, int]:
    """(question, block) lengths to keep when only the block may be cut; ``budget`` excludes specials.

    Raises:
        ValueError: the question leaves no room for a block token.
    """
    if budget - question_len < 1:
        raise ValueError(f"question of {question_len} tokens leaves no room in {budget + 3} tokens")
    return question_len, min(block_len, budget - question_len)


def truncate_longest_first(question_len: int, block_len: int, budget: int) -> tuple[int, int]:
    """(question, block) lengths to keep under HF's ``truncation=True`` (``longest_first``) for a pair.

    Follows ``truncate_encodings`` of the ``tokenizers`` library (``tokenizers/src/utils/truncation.rs``,
    ``TruncationStrategy::LongestFirst``), which HF ``RealmRetriever.__call__`` reaches through
    ``RealmTokenizerFast.__call__(text, text_pair, truncation=True, max_length=reader_seq_len)``;
    ``budget`` is ``max_length`` minus the 3 special tokens (``TokenizerImpl::post_process``). With
    ``n1 <= n2`` the shorter and longer lengths: nothing is cut when ``n1 + n2 <= budget``; else the
    longer keeps ``max(n1, budget - n1)`` (``n1`` if ``n1 > budget``), and if the two still exceed the
    budget both are cut, the shorter to ``budget // 2`` and the longer to ``budget // 2 + budget % 2``.
    Both sequences are cut on the right; the overflow is dropped.
    """
    if question_len + block_len <= budget:
        return question_len, block_len
    n1, n2 = sorted((question_len, block_len))
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1 = budget // 2
        n2 = n1 + budget % 2
    keep_q, keep_b = (n1, n2) if question_len <= block_len else (n2, n1)
    return min(question_len, keep_q), min(block_len, keep_b)


# Truncation strategies for reader pairs: (question_len, block_len, budget) → lengths to keep.
TRUNCATIONS: dict[str, Callable[[int, int, int], tuple[int, int]]] = {
    "only_block": truncate_only_block,
    "longest_first": truncate_longest_first,
}


class WordPieceTokenizer:
    """BERT WordPiece tokenizer loaded from ``tokenizer.json`` or ``vocab.txt``.

    Raises:
        FileNotFoundError: the directory has neither file.
        ValueError: the vocabulary lacks ``[CLS]``, ``[SEP]`` or ``[PAD]``.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self._content_id: str | None = None
        ids: dict[str, int] = {}
        for t in ("[CLS]", "[SEP]", "[PAD]"):
            i = tokenizer.token_to_id(t)
            if i is None:
                raise ValueError(f"tokenizer vocabulary lacks {t}")
            ids[t] = i
        self.cls_id, self.sep_id, self.pad_id = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]

    @classmethod
    def from_dir(cls, path: str | Path, lowercase: bool = True) -> WordPieceTokenizer:
        """Load ``path/tokenizer.json`` if present, else build BERT's pipeline from ``path/vocab.txt``."""
        path = Path(path)
        if (path / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(path / "tokenizer.json")))
        if (path / "vocab.txt").is_file():
            bert = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lowercase)
            return cls(bert._tokenizer)
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {path}")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def content_id(self) -> str:
        """sha256 of the tokenizer's full definition (``Tokenizer.to_str``: vocabulary, normaliser,
        pre-tokeniser, model settings); wordpieces stored at index build time are
        keyed to it."""
        if self._content_id is None:
            self._content_id = hashlib.sha256(self._tok.to_str().encode()).hexdigest()
        return self._content_id

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` into the directory ``path``."""
        self._tok.save(str(Path(path) / "tokenizer.json"))

    def pieces(self, texts: Sequence[str]) -> list[Pieces]:
        """Wordpieces of each text, without special tokens."""
        encs: list[Encoding] = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [Pieces(e.ids, [tuple(o) for o in e.offsets]) for e in encs]  # type: ignore[misc]

    def pieces_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Wordpieces of each text as flat arrays (for storing many: no Python object per piece).

        Returns:
            lengths: (texts,) int64 wordpieces per text; ids: (Σ lengths,) int64; offsets: (Σ lengths, 2) int64
            (start_char, end_char) into each text, end exclusive — text i's pieces are rows
            ``lengths[:i].sum()`` onwards.
        """
        encs: list[Encoding] = self._tok.encode_batch(list(texts), add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        ids = np.fromiter((i for e in encs for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
        offsets = np.fromiter((x for e in encs for o in e.offsets for x in o), dtype=np.int64,
                              count=2 * int(lengths.sum())).reshape(-1, 2)
        return lengths, ids, offsets

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text with the tokenizer's decoder, special tokens dropped."""
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def round_trip(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        """Each text as REALM's reader sees a question: encoded as the embedder input ``[CLS] text [SEP]``
        (cut to ``max_tokens`` tokens, as :meth:`encode_texts`), then decoded without special tokens.

        Follows HF ``RealmRetriever.__call__``: ``tokenizer.decode(question_input_ids[0],
        skip_special_tokens=True)``; the result is tokenized again with each block. ``[UNK]`` is a special
        token, so unknown words vanish; the text comes back normalised (lower case, accents stripped,
        pieces re-joined, spaces around punctuation). HF's optional ``clean_up_tokenization_spaces`` only
        removes spaces before punctuation, which re-tokenizing splits off again, so it is not applied.
        """
        return self.round_trip_pieces(self.pieces(texts), max_tokens)

    def round_trip_pieces(self, pieces: Sequence[Pieces], max_tokens: int) -> list[str]:
        """:meth:`round_trip` of texts already cut into wordpieces (their :meth:`pieces`): the same strings."""
        return [self.decode([self.cls_id, *p.ids[: max_tokens - 2], self.sep_id]) for p in pieces]

    def encode_texts(self, texts: Sequence[str], max_tokens: int) -> TextBatch:
        """``[CLS] text [SEP]`` per text, each cut to ``max_tokens`` tokens in all, padded to the longest."""
        return self.encode_pieces(self.pieces(texts), max_tokens)

    def encode_pieces(self, pieces: Sequence[Pieces], max_tokens: int) -> TextBatch:
        """:meth:`encode_texts` of texts already cut into wordpieces (their :meth:`pieces`)."""
        rows = [[self.cls_id, *p.ids[: max_tokens - 2], self.sep_id] for p in pieces]
        T = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention_mask[i, : len(r)] = 1
        return TextBatch(input_ids, attention_mask, torch.zeros_like(input_ids))

    def pair_rows(
        self, questions: Sequence[Pieces], blocks: Sequence[Pieces], max_length: int,
        truncation: str = "only_block",
    ) -> list[PairRow]:
        """Unpadded reader rows ``[CLS] question [SEP] block [SEP]`` for aligned (question, block) pairs,
        each pair cut to ``max_length`` tokens by the strategy ``truncation`` (a key of ``TRUNCATIONS``).

        Raises:
            ValueError: an unknown strategy, or (``only_block``) a question that leaves no room for a block token.
        """
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation {truncation!r} is not one of {sorted(TRUNCATIONS)}")
        cut = TRUNCATIONS[truncation]
        rows = []
        for qp, bp in zip(questions, blocks, strict=True):
            nq, nb = cut(len(qp.ids), len(bp.ids), max_length - 3)
            rows.append(PairRow([self.cls_id, *qp.ids[:nq], self.sep_id, *bp.ids[:nb], self.sep_id],
                                nq + 2, bp.offsets[:nb]))
        return rows

    def pad_pairs(self, rows: Sequence[PairRow], seq_len: int | None = None) -> PairBatch:
        """Rows padded on the right to ``seq_len`` tokens (default: the longest row), as a :class:`PairBatch`.

        Raises:
            ValueError: a row is longer than ``seq_len``.
        """
        T = max(len(r) for r in rows) if seq_len is None else seq_len
        if any(len(r) > T for r in rows):
            raise ValueError(f"a row of {max(len(r) for r in rows)} tokens does not fit in {T}")
        lengths = np.array([len(r) for r in rows])[:, None]
        block_start = np.array([r.block_start for r in rows])[:, None]
        block_end = np.array([r.block_end for r in rows])[:, None]
        pos = np.arange(T)
        input_ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r.ids
        attention_mask = pos < lengths
        return PairBatch(torch.from_numpy(input_ids), torch.from_numpy(attention_mask.astype(np.int64)),
                         torch.from_numpy(((pos >= block_start) & attention_mask).astype(np.int64)),
                         torch.from_numpy((pos >= block_start) & (pos < block_end)), rows)

    def encode_pairs(
        self, questions: Sequence[Pieces], blocks: Sequence[Pieces], max_length: int,
        truncation: str = "only_block",
    ) -> PairBatch:
        """Reader inputs for aligned (question, block) pairs, padded on the right to the longest row
        (:meth:`pair_rows` then :meth:`pad_pairs`).

        With ``truncation="longest_first"`` this equals HF ``RealmRetriever.__call__``:
        ``tokenizer(questions, blocks, padding=True, truncation=True, return_special_tokens_mask=True,
        max_length=max_length)``, with ``block_mask`` as in HF ``RealmForOpenQA.forward``.

        Args:
            questions, blocks: equally long sequences of wordpieces (see :meth:`pieces`).
            max_length: the most tokens in a row, special tokens included (REALM ``reader_seq_len``).
            truncation: a key of ``TRUNCATIONS``.

        Raises:
            ValueError: an unknown strategy, or (``only_block``) a question that leaves no room for a block token.
        """
        return self.pad_pairs(self.pair_rows(questions, blocks, max_length, truncation))

    def split_text(self, text: str, max_tokens: int) -> list[tuple[int, int]]:
        """Character ranges that cut ``text`` into blocks of at most ``max_tokens`` wordpieces.

        Cuts fall between words where possible (a piece starting with ``##`` continues a word). Returns
        one ``(0, len(text))`` range for a text that fits or has no wordpieces.
        """
        p = self.pieces([text])[0]
        if len(p.ids) <= max_tokens:
            return [(0, len(text))]
        vocab_cont = [(self._tok.id_to_token(i) or "").startswith("##") for i in p.ids]
        ranges = []
        start_tok, start_char = 0, 0
        while start_tok < len(p.ids):
            end_tok = min(start_tok + max_tokens, len(p.ids))
            if end_tok < len(p.ids):
                cut = end_tok
                while cut > start_tok + 1 and vocab_cont[cut]:
                    cut -= 1
                end_tok = cut
            end_char = p.offsets[end_tok][0] if end_tok < len(p.ids) else len(text)
            ranges.append((start_char, end_char))
            start_tok, start_char = end_tok, end_char
        return ranges
