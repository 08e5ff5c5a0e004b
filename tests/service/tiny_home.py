"""A home with a tiny random realmqa model (2-layer, 32-wide BERT embedder and reader, random weights) and
its index over a small synthetic corpus: fast enough for route tests and load runs on a busy CPU.

``python -m tests.service.tiny_home DIR [--blocks N] [--versions V]`` writes one for ``realmqa serve --home DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import torch
from safetensors.torch import save_file

from realm_core.bert import BertConfig
from realm_core.embedder import Embedder, EmbedderConfig
from realm_core.reader import ReaderConfig, SpanReader

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu red green blue river city king "
         "queen year war book song team won lost built north south east west who what when where").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert() -> BertConfig:
    return BertConfig(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)


def write_model(root: Path, seed: int = 0) -> None:
    """A realmqa model version directory at ``root`` (model.json, embedder, reader, vocab.txt)."""
    torch.manual_seed(seed)
    root.mkdir(parents=True)
    (root / "vocab.txt").write_text("\n".join(SPECIALS + list(WORDS)) + "\n")
    ecfg = EmbedderConfig(_bert(), pooling="mean", normalize=True, max_tokens=64)
    (root / "embedder_config.json").write_text(json.dumps(dataclasses.asdict(ecfg)))
    save_file({k: v.contiguous() for k, v in Embedder(ecfg).state_dict().items()}, root / "embedder.safetensors")
    rcfg = ReaderConfig(_bert(), span_hidden_size=16, max_span_width=4)
    (root / "reader_config.json").write_text(json.dumps(dataclasses.asdict(rcfg)))
    save_file({k: v.contiguous() for k, v in SpanReader(rcfg).state_dict().items()}, root / "reader.safetensors")
    (root / "model.json").write_text(json.dumps({
        "format": 1, "kind": "realmqa", "query_embedder": {"source": "realmqa", "path": "."}, "block_embedder": None,
        "reader": {"config": "reader_config.json", "weights": "reader.safetensors", "tokenizer": "."},
        "reader_seq_len": 96, "max_question_tokens": 24, "block_max_tokens": 64,
        "card": {"weights": f"random (torch.manual_seed({seed})), for tests and load runs only"}}))


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"id": f"b{i}", "title": rng.choice(WORDS),
                                        "text": " ".join(rng.choices(WORDS, k=rng.randint(8, 40)))}) + "\n"
                            for i in range(n)))


def make_tiny_home(home: Path, blocks: int = 200, versions: int = 1, name: str = "tiny") -> Path:
    """``home/models/<name>/1..versions`` (random, seed = version) each with an index over one corpus."""
    from index.home import Home
    from index.pipeline import build_from_corpus

    home.mkdir(parents=True, exist_ok=True)
    write_corpus(home / "corpus.jsonl", blocks)
    for v in range(1, versions + 1):
        write_model(home / "models" / name / str(v), seed=v)
        build_from_corpus(Home(home), name, f"{name}/{v}", home / "corpus.jsonl")
    return home


def questions(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) + "?" for _ in range(n)]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("home", type=Path)
    p.add_argument("--blocks", type=int, default=200)
    p.add_argument("--versions", type=int, default=1)
    a = p.parse_args()
    print(make_tiny_home(a.home, a.blocks, a.versions))
