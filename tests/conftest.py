"""Shared fixtures: the bundled model, a small corpus cut from the bundled one, a small home, and a random
tiny Hugging Face REALM checkpoint with its reference answers (``hf_realm``; needs transformers).

Torch threads: 2, or ``REALMQA_TEST_THREADS`` (e.g. 1 on a machine shared with other work)."""

from __future__ import annotations

import gzip
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from realm_core.model_dir import QAModel
from service.settings import BUNDLED_HOME

torch.set_num_threads(int(os.environ.get("REALMQA_TEST_THREADS", "2")))

BUNDLED_MODEL = BUNDLED_HOME / "models" / "minilm-squad" / "1"
BUNDLED_CORPUS = BUNDLED_HOME / "corpus" / "squad-v1.1-paragraphs.jsonl.gz"


def write_corpus(path: Path, n: int, skip: int = 0) -> list[dict[str, str]]:
    """The bundled corpus' documents ``skip .. skip+n`` as plain JSON Lines at ``path``."""
    with gzip.open(BUNDLED_CORPUS, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in itertools.islice(f, skip, skip + n)]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return docs


def held_out_questions(n: int, question: int = 0) -> list[tuple[str, str, list[str]]]:
    """(question, gold paragraph, answers) of the ``question``-th question of paragraphs spread evenly over every
    held-out article (``service/default/heldout``), ``n`` of them."""
    held = BUNDLED_HOME / "heldout" / "squad-train-heldout.json"
    items = [(p["qas"][question]["question"], p["context"], [a["text"] for a in p["qas"][question]["answers"]])
             for art in json.loads(held.read_text())["data"] for p in art["paragraphs"] if len(p["qas"]) > question]
    return items[:: len(items) // n][:n]


def reader_inputs(m: QAModel, items: list[tuple[str, str, list[str]]]) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, token_type_ids) of ``items``' (question, gold paragraph) rows for ``m``'s
    reader, padded to the longest: the arguments of ``SpanReader.span_scores``."""
    tok = m.reader_tokenizer
    enc = tok.pad_pairs(tok.pair_rows(tok.pieces([q for q, _, _ in items]), tok.pieces([c for _, c, _ in items]),
                                      m.reader_seq_len, "only_block"))
    return enc.input_ids, enc.attention_mask, enc.token_type_ids


def copy_model_with(tmp_path: Path, **fields: object) -> Path:
    """``tmp_path/m``: the bundled model version 1 with ``fields`` changed in model.json (its other files linked)."""
    d = tmp_path / "m"
    d.mkdir(parents=True)
    for f in BUNDLED_MODEL.iterdir():
        if f.name != "model.json":
            (d / f.name).symlink_to(f)
    spec = json.loads((BUNDLED_MODEL / "model.json").read_text())
    spec["default_corpus"] = str(BUNDLED_MODEL / spec["default_corpus"])
    (d / "model.json").write_text(json.dumps({**spec, **fields}))
    return d


def make_home(root: Path) -> Path:
    """A home whose models/ links the bundled model; no index yet."""
    (root / "models").mkdir(parents=True)
    (root / "models" / "minilm-squad").symlink_to(BUNDLED_MODEL.parent)
    return root


@pytest.fixture(scope="session")
def small_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with the bundled model and index ``small`` (v1) over 24 Super Bowl 50 and Notre Dame paragraphs."""
    from index.home import Home
    from index.pipeline import build_from_corpus

    root = make_home(tmp_path_factory.mktemp("home"))
    corpus = root / "corpus.jsonl"
    docs = write_corpus(corpus, 12)  # University of Notre Dame
    with gzip.open(BUNDLED_CORPUS, "rt", encoding="utf-8") as f:
        sb = [json.loads(line) for line in f if json.loads(line)["id"].startswith("dev/Super_Bowl_50/")][:12]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs + sb))
    build_from_corpus(Home(root), "small", "minilm-squad/1", corpus)
    return root


@dataclass
class HfRealmFixture:
    """A saved random tiny HF REALM checkpoint, the reference loaded from it, and its answers."""

    path: Path
    hf: Any  # tests.realm_core.hf_reference.HfRealm
    questions: list[str]
    answers: list[Any]  # tests.realm_core.hf_reference.HfAnswer, one per question


@pytest.fixture(scope="session")
def hf_realm(tmp_path_factory: pytest.TempPathFactory) -> HfRealmFixture:
    """Needs transformers 4.57.x (the ``reference`` extra); test modules using it importorskip it first."""
    from tests.realm_core.hf_reference import HfRealm, build_checkpoint, make_questions

    path = tmp_path_factory.mktemp("hf-realm") / "tiny-realm"
    build_checkpoint(path)
    hf = HfRealm(path)
    questions = make_questions(60)
    return HfRealmFixture(path, hf, questions, [hf.answer(q) for q in questions])
