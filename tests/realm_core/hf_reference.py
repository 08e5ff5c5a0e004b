"""A random tiny Hugging Face REALM (``RealmForOpenQA`` + ``RealmRetriever``, transformers 4.57.x) saved with
``save_pretrained``, and its answers, captured from inside the reference, for parity tests.

Only imported by tests that first ran ``pytest.importorskip("transformers")``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = sorted(set("""
the a an of and to in is was who what when where which how why city river king queen war play run house
north south east west first last old new great small long year century empire church army ship island
mountain lake forest road bridge tower castle school music film book song team game world state nation
people language history science art water fire stone gold iron light night day born died built found
wrote won lost made gave took named called known became famous early late battle treaty law court
president minister general captain poet painter author singer player coach leader founder bishop duke
france paris london rome egypt china india spain berlin vienna moscow tokyo cairo delhi madrid lisbon
""".split()))
SUFFIXES = ["##s", "##ed", "##ing", "##er", "##ly", "##ian"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789")
PUNCT = list(".,?!;:'\"()-")
VOCAB = list(dict.fromkeys(SPECIALS + WORDS + SUFFIXES + LETTERS + ["##" + c for c in LETTERS] + PUNCT))

CONFIG: dict[str, Any] = dict(
    vocab_size=len(VOCAB), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    retriever_proj_size=16, span_hidden_size=16, max_span_width=10, reader_beam_size=5, reader_seq_len=80,
    num_block_records=2000, max_position_embeddings=160, searcher_beam_size=5000,
)


def _sentence(rng: random.Random, n: int) -> str:
    """Vocabulary words, some with suffixes ("playing" → play ##ing), capitals and punctuation."""
    out = []
    for _ in range(n):
        w = rng.choice(WORDS)
        r = rng.random()
        if r < 0.15:
            w += rng.choice(SUFFIXES)[2:]
        elif r < 0.2:
            w = w.capitalize()
        elif r < 0.23:
            w += rng.choice([",", ".", ";"])
        out.append(w)
    return " ".join(out)


def make_questions(n: int = 60, seed: int = 1) -> list[str]:
    """Short and long questions; some with words outside the vocabulary (``[UNK]``), accents, capitals.

    Long ones (45-70 words) exceed half of ``reader_seq_len`` − 3, so ``longest_first`` cuts the question too.
    """
    rng = random.Random(seed)
    qs = []
    for i in range(n):
        length = rng.randint(45, 70) if i % 6 == 5 else rng.randint(3, 14)
        words = _sentence(rng, length).split()
        if i % 5 == 1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(["中", "🙂", "€uro", "ǅ"]))
        if i % 7 == 2:
            words.insert(0, "Où était")
        qs.append(" ".join(words) + "?")
    return qs


def build_checkpoint(out: Path, seed: int = 0, num_blocks: int = 2000) -> None:
    """Write a random tiny RealmForOpenQA (every parameter perturbed, random ``block_emb``) and its
    RealmRetriever (``num_blocks`` block records of vocabulary words) into ``out``."""
    from transformers.models.deprecated.realm import (
        RealmConfig,
        RealmForOpenQA,
        RealmRetriever,
        RealmTokenizerFast,
    )

    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = RealmTokenizerFast(vocab_file=str(out / "vocab.txt"))
    rng = random.Random(seed)
    records = np.array([_sentence(rng, rng.randint(8, 90)).encode("utf-8") for _ in range(num_blocks)],
                       dtype=object)
    torch.manual_seed(seed)
    config = RealmConfig(**{**CONFIG, "num_block_records": num_blocks})
    model = RealmForOpenQA(config, retriever=RealmRetriever(records, tokenizer)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Every tensor perturbed (LayerNorm weights and biases away from 1 and 0 too), strongly enough that
        # questions retrieve different blocks; block_emb scaled so that span scores, not only relevance,
        # decide the block (the reader picks blocks 0-4 of the beam, not always the first).
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
        model.block_emb.copy_(0.15 * torch.randn(model.block_emb.shape, generator=g))
    model.save_pretrained(out, safe_serialization=False)  # safetensors fails on tied heads in 4.57.6
    model.retriever.save_pretrained(out)


@dataclass
class HfAnswer:
    """What the reference does with one question, captured from inside ``RealmForOpenQA.forward``."""

    question: str
    question_ids: list[int]  # embedder input [CLS] q [SEP]
    projection: torch.Tensor  # (retriever_proj_size,) RealmEmbedder projected_score
    top_ids: list[int]  # top-10 block ids by torch.topk over the einsum scores, best first
    retrieved_ids: list[int]  # the reader beam RealmForOpenQA retrieved
    reader_inputs: dict[str, torch.Tensor]  # RealmRetriever's concat_inputs, (beam, seq_len) each
    block_mask: torch.Tensor  # (beam, seq_len) bool
    relevance: torch.Tensor  # (beam,) retrieved_logits
    logits: torch.Tensor  # (beam, num_spans) reader logits with the relevance added
    block_idx: int
    candidate: int
    start_pos: int
    end_pos: int
    answer_ids: list[int]
    answer: str  # tokenizer.decode(predicted_answer_ids)


class HfRealm:
    """The reference loaded back with ``from_pretrained`` from a saved checkpoint directory."""

    def __init__(self, path: Path) -> None:
        import os

        from transformers.models.deprecated.realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast

        before = os.environ.get("TRUST_REMOTE_CODE")
        os.environ["TRUST_REMOTE_CODE"] = "True"  # RealmRetriever.from_pretrained unpickles our block_records
        try:
            self.retriever = RealmRetriever.from_pretrained(path)
        finally:
            if before is None:
                del os.environ["TRUST_REMOTE_CODE"]
            else:
                os.environ["TRUST_REMOTE_CODE"] = before
        self.tokenizer = RealmTokenizerFast.from_pretrained(path)
        self.model = RealmForOpenQA.from_pretrained(path, retriever=self.retriever).eval()

    @torch.no_grad()
    def answer(self, question: str) -> HfAnswer:
        m, captured = self.model, {}

        def on_retriever(*args: Any, **kwargs: Any) -> Any:
            captured["ids"] = args[0].tolist()
            result = retriever_call(*args, **kwargs)
            captured["inputs"] = result[3]
            return result

        def on_reader(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            captured["relevance"] = kwargs["relevance_score"].clone()
            captured["block_mask"] = kwargs["block_mask"].clone()

        def on_qa(module: Any, args: Any, output: Any) -> None:
            captured["span_logits"] = output[0].clone()  # before RealmReader.forward adds the relevance

        retriever_call = m.retriever
        m.retriever = on_retriever
        h1 = m.reader.register_forward_pre_hook(on_reader, with_kwargs=True)
        h2 = m.reader.qa_outputs.register_forward_hook(on_qa)
        try:
            q = self.tokenizer([question], return_tensors="pt")
            out = m(**q, return_dict=True)
        finally:
            m.retriever = retriever_call
            h1.remove()
            h2.remove()
        projection = m.embedder(**q).projected_score[0]
        scores = torch.einsum("BD,QD->QB", m.block_emb, projection[None])[0]
        beam = m.config.reader_beam_size
        inputs = captured["inputs"]
        rel = captured["relevance"]
        r = out.reader_output
        ids = out.predicted_answer_ids
        return HfAnswer(
            question=question, question_ids=q.input_ids[0].tolist(), projection=projection,
            top_ids=torch.topk(scores, k=10).indices.tolist(),
            retrieved_ids=captured["ids"],
            reader_inputs={k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids",
                                                  "special_tokens_mask")},
            block_mask=captured["block_mask"], relevance=rel,
            logits=captured["span_logits"] + rel[:beam, None],  # RealmReader.forward: reader_logits += ...
            block_idx=int(r.block_idx), candidate=int(r.candidate), start_pos=int(r.start_pos[0]),
            end_pos=int(r.end_pos[0]), answer_ids=ids.tolist(), answer=self.tokenizer.decode(ids))
