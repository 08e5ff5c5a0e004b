"""SQuAD v1.1 data for reader training: whole-article held-out split, questions with their gold and negative
blocks, correct spans found by wordpiece ids (HF ``RealmReader``'s ``compute_correct_candidates``), training
windows, and batches of reader inputs (used by ``realm_core.train_reader``)."""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from realm_core.reader import ReaderConfig
from realm_core.tokenizer import Pieces, WordPieceTokenizer


def load_squad(path: str | Path) -> list[dict[str, Any]]:
    """Articles of a SQuAD-format JSON file (gzip or plain)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)["data"]  # type: ignore[no-any-return]


def split_heldout(
    articles: list[dict[str, Any]], n_questions: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out whole articles, drawn in a seeded order, until at least ``n_questions`` are held out."""
    order = list(range(len(articles)))
    random.Random(seed).shuffle(order)
    held, count = set(), 0
    for i in order:
        if count >= n_questions:
            break
        held.add(i)
        count += sum(len(p["qas"]) for p in articles[i]["paragraphs"])
    return ([a for i, a in enumerate(articles) if i not in held], [a for i, a in enumerate(articles) if i in held])


def find_correct_spans(block: Pieces, answers: list[Pieces], max_span_width: int) -> list[tuple[int, int]]:
    """(start, end) block-piece indices, end inclusive, of every occurrence of any answer's ids."""
    spans = set()
    ids = block.ids
    for a in answers:
        n = len(a.ids)
        if n == 0 or n > max_span_width:
            continue
        for s in range(len(ids) - n + 1):
            if ids[s : s + n] == a.ids:
                spans.add((s, s + n - 1))
    return sorted(spans)


@dataclass
class Example:
    id: str  # the SQuAD question id
    question: Pieces
    blocks: list[Pieces]  # gold first, then negatives; already cut to the reader's budget
    correct: list[list[tuple[int, int]]]  # per block


def window(
    block: Pieces, spans: list[tuple[int, int]], size: int, rng: random.Random
) -> tuple[Pieces, list[tuple[int, int]]]:
    """A random window of ``size`` pieces holding the first correct span, and the spans inside it, shifted."""
    if len(block.ids) <= size:
        return block, spans
    s, e = spans[0]
    lo, hi = max(0, e - size + 1), min(s, len(block.ids) - size)
    w0 = rng.randint(lo, max(lo, hi))
    kept = [(a - w0, b - w0) for a, b in spans if a >= w0 and b < w0 + size]
    return Pieces(block.ids[w0 : w0 + size], block.offsets[w0 : w0 + size]), kept


def build_examples(
    tok: WordPieceTokenizer,
    articles: list[dict[str, Any]],
    cfg: ReaderConfig,
    reader_seq_len: int,
    max_question_tokens: int,
    negatives: int,
    seed: int,
    train_window: int = 0,
) -> list[Example]:
    """Training questions with their blocks and correct spans; ``train_window`` > 0 cuts each block to a
    random window of that many pieces around the answer (cheaper steps on a CPU)."""
    rng = random.Random(seed)
    examples = []
    for art in articles:
        paras = art["paragraphs"]
        ctx = tok.pieces([p["context"] for p in paras])
        for pi, p in enumerate(paras):
            qas = p["qas"]
            qs = tok.pieces([qa["question"] for qa in qas])
            ans = [tok.pieces([a["text"] for a in qa["answers"]]) for qa in qas]
            for qa, q, a in zip(qas, qs, ans):
                q = Pieces(q.ids[:max_question_tokens], q.offsets[:max_question_tokens])
                budget = reader_seq_len - len(q.ids) - 3
                others = [j for j in range(len(paras)) if j != pi]
                if len(others) < negatives:
                    continue  # every question of a batch must read the same number of blocks (see collate)
                picks = [pi] + rng.sample(others, negatives)
                blocks = [Pieces(ctx[j].ids[:budget], ctx[j].offsets[:budget]) for j in picks]
                correct = [find_correct_spans(b, a, cfg.max_span_width) for b in blocks]
                if train_window and correct[0]:
                    blocks[0], correct[0] = window(blocks[0], correct[0], train_window, rng)
                    for j in range(1, len(blocks)):
                        blocks[j], correct[j] = (
                            Pieces(blocks[j].ids[:train_window], blocks[j].offsets[:train_window]),
                            [sp for sp in correct[j] if sp[1] < train_window],
                        )
                if correct[0]:
                    examples.append(Example(str(qa["id"]), q, blocks, correct))
    return examples


def collate(
    tok: WordPieceTokenizer, batch: list[Example], reader_seq_len: int, max_span_width: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Reader inputs for a batch and a (rows, num_spans) bool mask of correct spans, rows = questions × blocks.

    Raises:
        ValueError: the questions read different numbers of blocks.
    """
    from realm_core.reader import span_candidates

    if len({len(ex.blocks) for ex in batch}) != 1:
        raise ValueError("every question of a batch must read the same number of blocks")
    qs = [ex.question for ex in batch for _ in ex.blocks]
    bs = [b for ex in batch for b in ex.blocks]
    enc = tok.encode_pairs(qs, bs, reader_seq_len)
    T = enc.input_ids.shape[1]
    starts, ends = span_candidates(T, max_span_width)
    grid = torch.zeros((len(bs), T, T), dtype=torch.bool)
    r = 0
    for ex in batch:
        off = len(ex.question.ids) + 2
        for spans in ex.correct:
            for s, e in spans:
                grid[r, off + s, off + e] = True
            r += 1
    correct = grid[:, starts, ends]  # (rows_total, C)
    inputs = dict(
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        token_type_ids=enc.token_type_ids,
        block_mask=enc.block_mask,
    )
    return inputs, correct


def training_order(examples: list[Example], seed: int, seen: int = 0) -> list[Example]:
    """The order ``realmqa train-reader`` reads ``examples`` in: a ``seed``-ed shuffle (a copy), with its
    first ``seen`` questions (already trained on) moved to the end (:func:`seen_last`)."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    return seen_last(order, seen)


def seen_last(examples: list[Example], seen: int) -> list[Example]:
    """The seeded order with its first ``seen`` questions (already trained on) moved to the end."""
    seen = min(max(seen, 0), len(examples))
    return examples[seen:] + examples[:seen]
