"""WordPiece tokenization over the ``tokenizers`` library, and the reader's pair layout.

Texts are tokenized without special tokens; the ``[CLS] question [SEP] block [SEP]`` layout is then
assembled from the pieces (as HF ``build_inputs_with_special_tokens``), so that block encodings can be
reused and the character offset of every block wordpiece is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    block_offsets: torch.Tensor


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

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` into the directory ``path``."""
        self._tok.save(str(Path(path) / "tokenizer.json"))

    def pieces(self, texts: Sequence[str]) -> list[Pieces]:
        """Wordpieces of each text, without special tokens."""
        encs: list[Encoding] = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [Pieces(e.ids, [tuple(o) for o in e.offsets]) for e in encs]  # type: ignore[misc]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text with the tokenizer's decoder, special tokens dropped."""
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def encode_texts(self, texts: Sequence[str], max_tokens: int) -> TextBatch:
        """``[CLS] text [SEP]`` per text, each cut to ``max_tokens`` tokens in all, padded to the longest."""
        rows = [[self.cls_id, *p.ids[: max_tokens - 2], self.sep_id] for p in self.pieces(texts)]
        T = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention_mask[i, : len(r)] = 1
        return TextBatch(input_ids, attention_mask, torch.zeros_like(input_ids))

    def encode_pairs(
        self, questions: Sequence[Pieces], blocks: Sequence[Pieces], max_length: int
    ) -> PairBatch:
        """Reader inputs for aligned (question, block) pairs; only the block is truncated.

        Args:
            questions, blocks: equally long sequences of wordpieces (see :meth:`pieces`).
            max_length: the most tokens in a row, special tokens included (REALM ``reader_seq_len``).

        Raises:
            ValueError: a question leaves no room for a block token.
        """
        rows: list[tuple[list[int], list[int], list[tuple[int, int]]]] = []
        for qp, bp in zip(questions, blocks, strict=True):
            budget = max_length - len(qp.ids) - 3
            if budget < 1:
                raise ValueError(f"question of {len(qp.ids)} tokens leaves no room in {max_length} tokens")
            rows.append((qp.ids, bp.ids[:budget], bp.offsets[:budget]))
        T = max(len(q) + len(b) + 3 for q, b, _ in rows)
        n = len(rows)
        input_ids = torch.full((n, T), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, T), dtype=torch.long)
        token_type_ids = torch.zeros((n, T), dtype=torch.long)
        block_mask = torch.zeros((n, T), dtype=torch.bool)
        block_offsets = torch.full((n, T, 2), -1, dtype=torch.long)
        for i, (q, b, off) in enumerate(rows):
            s = len(q) + 2  # first block position
            e = s + len(b)
            input_ids[i, : e + 1] = torch.tensor([self.cls_id, *q, self.sep_id, *b, self.sep_id])
            attention_mask[i, : e + 1] = 1
            token_type_ids[i, s : e + 1] = 1
            block_mask[i, s:e] = True
            if off:
                block_offsets[i, s:e] = torch.tensor(off)
        return PairBatch(input_ids, attention_mask, token_type_ids, block_mask, block_offsets)

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
