"""``realmqa convert-hf`` on a saved random tiny HF REALM, then the engine, the registry and the HTTP API
against ``RealmForOpenQA``'s own answers (fixture ``hf_realm`` in ``tests/conftest.py``, 60 questions)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

pytest.importorskip("transformers", reason="REALM parity tests need the test-only reference extra: "
                    "pip install 'transformers>=4.57,<4.58'")

from index.convert_hf import convert_hf_realm  # noqa: E402
from index.version import open_version  # noqa: E402
from realm_core.checkpoint import CheckpointError  # noqa: E402
from realm_core.evaluation import normalize_answer  # noqa: E402
from service.app import create_app  # noqa: E402
from service.cli import main  # noqa: E402
from service.engine import Answer, QAEngine  # noqa: E402
from service.registry import load_engine  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.conftest import HfRealmFixture  # noqa: E402
from tests.realm_core.hf_reference import HfAnswer  # noqa: E402

NAME = "tiny-realm"


@pytest.fixture(scope="module")
def home(hf_realm: HfRealmFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    c = convert_hf_realm(hf_realm.path, home, NAME, chunk_rows=300, progress=False)
    assert c.model_ref == f"{NAME}/1"
    assert (c.index.name, c.index.version, c.index.embedder) == (NAME, 1, f"{NAME}/1")
    assert (c.index.count, c.index.dim, c.index.factory) == (2000, 16, "Flat")
    return home


@pytest.fixture(scope="module")
def engine(home: Path) -> QAEngine:
    return load_engine(home, NAME, build_missing=False)


def _answer_pieces(engine: QAEngine, text: str, start_char: int, end_char: int) -> list[int]:
    """The block wordpieces that lie inside [start_char, end_char) of the block text."""
    p = engine.model.reader_tokenizer.pieces([text])[0]
    return [i for i, (s, e) in zip(p.ids, p.offsets, strict=True) if start_char <= s and e <= end_char]


def _assert_same_answer(engine: QAEngine, ours: Answer, ref: HfAnswer, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    best = ours.best
    assert best.block.block.id == str(ref.retrieved_ids[ref.block_idx]), ref.question
    assert best.block.block.text[best.start_char:best.end_char] == best.answer
    ids = _answer_pieces(engine, best.block.block.text, best.start_char, best.end_char)
    assert ids == ref.answer_ids, ref.question
    assert hf_tokenizer.decode(ids) == ref.answer
    # The text as written in the block vs HF's decoded ids: equal after SQuAD normalisation (case, spacing
    # before punctuation and a leading "##" are all that differ).
    assert normalize_answer(best.answer) == normalize_answer(ref.answer)


def test_converted_files(home: Path, hf_realm: HfRealmFixture) -> None:
    spec = json.loads((home / "models" / NAME / "1" / "model.json").read_text())
    assert spec["kind"] == "realm-hf" and spec["reader_truncation"] == "longest_first"
    assert spec["reader_question"] == "decoded" and spec["block_max_tokens"] == 288
    assert {"embedder.safetensors", "reader.safetensors", "tokenizer.json", "vocab.txt"} <= {
        p.name for p in (home / "models" / NAME / "1").iterdir()}
    v = open_version(home / "indexes", NAME)
    rows = [0, 1, 999, 1999]
    blocks = v.blocks.get(rows)
    records = hf_realm.hf.retriever.block_records
    assert [(b.id, b.title, b.text) for b in blocks] == [(str(r), "", records[r].decode()) for r in rows]
    xb = v.index.reconstruct_n(0, v.index.ntotal)
    assert np.array_equal(xb, hf_realm.hf.model.block_emb.numpy())
    assert not [p for p in (home / "models" / NAME).iterdir() if p.name.startswith(".")]  # no staging left


def test_engine_answers_equal_hf(engine: QAEngine, hf_realm: HfRealmFixture) -> None:
    """All 60 questions in one batch: the answer of RealmForOpenQA (same block, same wordpieces)."""
    answers = engine.answer(hf_realm.questions, 5)
    for ours, ref in zip(answers, hf_realm.answers, strict=True):
        _assert_same_answer(engine, ours, ref, hf_realm.hf.tokenizer)


def test_engine_reader_logits_equal_hf(engine: QAEngine, hf_realm: HfRealmFixture) -> None:
    """All questions' reader beams in one batch of length-grouped reader passes: each question's rows as HF
    pads them, its logits within 1e-4 of HF's."""
    pieces = engine.question_pieces(hf_realm.questions)
    found = engine.retrieve(hf_realm.questions, 5)
    batch = engine.read(pieces, [r.blocks for r in found])
    assert len(batch.pass_rows) < len(hf_realm.questions)  # rows of several questions share a pass
    tok = engine.model.reader_tokenizer
    scale = engine.model.reader.config.relevance_scale
    for r, reading, ref in zip(found, batch.readings, hf_realm.answers, strict=True):
        assert [b.block.id for b in r.blocks] == [str(i) for i in ref.retrieved_ids]
        assert torch.equal(reading.inputs(tok).input_ids, ref.reader_inputs["input_ids"])
        logits = reading.logits(scale)
        live = ref.logits > -1e30
        assert torch.equal(logits > -1e30, live)
        assert (logits[live] - ref.logits[live]).abs().max().item() <= 1e-4


def test_batch_equals_one_at_a_time(engine: QAEngine, hf_realm: HfRealmFixture) -> None:
    qs = hf_realm.questions[:24]
    batched = engine.answer(qs, 5)
    for q, b in zip(qs, batched, strict=True):
        s = engine.answer([q], 5)[0]
        assert (s.best.answer, s.best.block.block.id, s.best.start_char, s.best.end_char) == (
            b.best.answer, b.best.block.block.id, b.best.start_char, b.best.end_char)
        assert s.best.score == pytest.approx(b.best.score, abs=1e-4)
        assert [(c.block.block.id, c.start_char, c.end_char) for c in s.candidates] == [
            (c.block.block.id, c.start_char, c.end_char) for c in b.candidates]
    for q, rb in zip(qs, engine.retrieve(qs, 10), strict=True):
        rs = engine.retrieve([q], 10)[0]
        assert [x.block.id for x in rs.blocks] == [x.block.id for x in rb.blocks]
        assert [x.score for x in rs.blocks] == pytest.approx([x.score for x in rb.blocks], abs=1e-5)


def test_checked_questions_are_not_cut_again(engine: QAEngine, hf_realm: HfRealmFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """What the route's check returns (each question's wordpieces, REALM's decoded question included) goes to
    the engine with the batch: the answers equal those of a call that cuts the questions itself, bit for bit,
    and no question is cut again."""
    qs = hf_realm.questions[:24]
    plain, plain_r = engine.answer(qs, 5), engine.retrieve(qs, 7)
    prepared = [engine.validate_question(q) for q in qs]
    queries = [engine.validate_query(q) for q in qs]

    def cut(texts: list[str]) -> list[object]:
        assert not texts, f"cut again: {texts!r}"  # (the reader cuts the blocks without stored pieces: none here)
        return []

    monkeypatch.setattr(engine.model.reader_tokenizer, "pieces", cut)
    monkeypatch.setattr(engine.model.query.tokenizer, "pieces", cut)
    ours, ours_r = engine.answer(qs, 5, prepared), engine.retrieve(qs, 7, queries)
    for a, b in zip(plain, ours, strict=True):
        assert [(c.answer, c.score, c.start_char, c.end_char, c.block.block.id, c.block.score)
                for c in [a.best, *a.candidates]] == [
            (c.answer, c.score, c.start_char, c.end_char, c.block.block.id, c.block.score)
            for c in [b.best, *b.candidates]]
    for a_r, b_r in zip(plain_r, ours_r, strict=True):
        assert [(x.block.id, x.score) for x in a_r.blocks] == [(x.block.id, x.score) for x in b_r.blocks]


def test_http_answer_and_retrieve_equal_hf(home: Path, hf_realm: HfRealmFixture, engine: QAEngine) -> None:
    """convert-hf → registry → the app as ``realmqa serve --home`` builds it → /answer and /retrieve."""
    settings = Settings(home=home, build_missing_index=False)
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").status_code == 200
        for q, ref in list(zip(hf_realm.questions, hf_realm.answers, strict=True))[:20]:
            r = c.post("/answer", json={"question": q})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == f"{NAME}/1" and body["index"] == f"{NAME}/1"
            assert body["block"]["id"] == str(ref.retrieved_ids[ref.block_idx])
            ids = _answer_pieces(engine, body["block"]["text"], body["start_char"], body["end_char"])
            assert ids == ref.answer_ids and hf_realm.hf.tokenizer.decode(ids) == ref.answer
            assert normalize_answer(body["answer"]) == normalize_answer(ref.answer)
            r = c.post("/retrieve", json={"query": q, "k": 10})
            assert [b["id"] for b in r.json()["blocks"]] == [str(i) for i in ref.top_ids]


def test_cli_convert_twice_makes_new_versions(hf_realm: HfRealmFixture, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    for v in (1, 2):
        main(["convert-hf", "--checkpoint", str(hf_realm.path), "--home", str(home), "--chunk-rows", "512"])
        out = capsys.readouterr().out.split("\n")
        assert out[:2] == [f"model tiny-realm/{v}", f"index tiny-realm/{v}"]
    assert open_version(home / "indexes", "tiny-realm").manifest.embedder == "tiny-realm/2"
    assert load_engine(home, "tiny-realm", build_missing=False).index_ref == "tiny-realm/2"


def test_bad_checkpoints_publish_nothing(hf_realm: HfRealmFixture, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(hf_realm.path, ckpt)
    records = np.load(ckpt / "block_records.npy", allow_pickle=True)
    np.save(ckpt / "block_records.npy", records[:-1])
    home = tmp_path / "home"
    with pytest.raises(CheckpointError, match="2000 rows but block_records.npy has 1999"):
        convert_hf_realm(ckpt, home, "bad", progress=False)
    assert list((home / "models" / "bad").iterdir()) == []
    assert not (home / "indexes" / "bad").exists() or list((home / "indexes" / "bad").iterdir()) == []
    with pytest.raises(ValueError, match="must match"):
        convert_hf_realm(hf_realm.path, home, "../escape", progress=False)
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_hf_realm(ckpt, home, "bad", progress=False)
