"""service.engine.QAEngine on the bundled model over a small real index, and the HTTP path to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from index.version import open_version
from realm_core.model_dir import load_model_dir
from service.app import create_app
from service.engine import QAEngine
from service.errors import InvalidInput
from service.registry import Registry, find_index, model_versions
from service.settings import Settings
from tests.conftest import BUNDLED_HOME, BUNDLED_MODEL
from tests.service.tiny_home import write_model

SERVED = f"minilm-squad/{model_versions(BUNDLED_HOME, 'minilm-squad')[-1]}"  # a home serves the newest version

QUESTIONS = [
    "Which NFL team won Super Bowl 50?",
    "Where was Super Bowl 50 played?",
    "To whom did the Virgin Mary allegedly appear in 1858 in Lourdes France?",
    "What is in front of the Notre Dame Main Building?",
]


@pytest.fixture(scope="module")
def engine(small_home: Path) -> QAEngine:
    model = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    return QAEngine(model, open_version(small_home / "indexes", "small"))


def test_answer_is_a_span_of_a_retrieved_block(engine: QAEngine) -> None:
    for a in engine.answer(QUESTIONS, 5):
        b = a.best.block
        assert b.block.text[a.best.start_char:a.best.end_char] == a.best.answer
        assert a.best.answer.strip()
        assert a.best.score == max(c.score for c in a.candidates)
        assert [c.score for c in a.candidates] == sorted((c.score for c in a.candidates), reverse=True)
        assert {"embed_ms", "search_ms", "read_ms"} <= set(a.timings_ms)


def test_batch_equals_one_at_a_time(engine: QAEngine) -> None:
    batched = engine.answer(QUESTIONS, 5)
    for q, b in zip(QUESTIONS, batched):
        single = engine.answer([q], 5)[0]
        assert (single.best.answer, single.best.block.block.id) == (b.best.answer, b.best.block.block.id)
        assert single.best.score == pytest.approx(b.best.score, abs=1e-3)
    ret_b = engine.retrieve(QUESTIONS, 7)
    for q, rb in zip(QUESTIONS, ret_b):
        rs = engine.retrieve([q], 7)[0]
        assert [x.block.id for x in rs.blocks] == [x.block.id for x in rb.blocks]


def test_checked_questions_answer_the_same(engine: QAEngine) -> None:
    """The route's check returns each question's wordpieces; the engine's call with them answers as one that
    cuts the questions itself (questions as typed: the bundled model's reader reads the text)."""
    plain = engine.answer(QUESTIONS, 5)
    ours = engine.answer(QUESTIONS, 5, [engine.validate_question(q) for q in QUESTIONS])
    for a, b in zip(plain, ours, strict=True):
        assert [(c.answer, c.score, c.start_char, c.end_char, c.block.block.id) for c in [a.best, *a.candidates]] == [
            (c.answer, c.score, c.start_char, c.end_char, c.block.block.id) for c in [b.best, *b.candidates]]


def test_timings_are_each_requests_share(engine: QAEngine) -> None:
    """Each answer carries its share of the batch's stages: embed/search split evenly, read in proportion to
    the reader tokens of its rows (padding included), all from one set of reader passes."""
    answers = engine.answer(QUESTIONS, 5)
    stats = answers[0].read_stats
    assert stats is not None and all(a.read_stats is stats for a in answers)
    assert sum(stats.pass_rows) == 5 * len(QUESTIONS) and stats.tokens <= stats.padded_tokens
    assert len({a.timings_ms["embed_ms"] for a in answers}) == 1
    found = engine.retrieve(QUESTIONS, 5)
    readings = engine.read(engine.question_pieces(QUESTIONS), [r.blocks for r in found]).readings
    shares = [r.padded_tokens / stats.padded_tokens for r in readings]
    assert sum(shares) == pytest.approx(1.0)
    total = sum(a.timings_ms["read_ms"] for a in answers)
    for a, share in zip(answers, shares, strict=True):
        assert a.timings_ms["read_ms"] == pytest.approx(total * share)
    assert len({round(s, 6) for s in shares}) > 1  # questions whose blocks differ in length pay differently


def test_retrieval_finds_the_topic(engine: QAEngine) -> None:
    r = engine.retrieve(["Which NFL team won Super Bowl 50?", "Notre Dame Catholic character"], 3)
    assert r[0].blocks[0].block.id.startswith("dev/Super_Bowl_50/")
    assert r[1].blocks[0].block.id.startswith("train/University_of_Notre_Dame/")
    assert [b.rank for b in r[0].blocks] == [1, 2, 3]


def test_bundled_reader_answers_super_bowl(engine: QAEngine) -> None:
    """The bundled default's promise (README): Super Bowl 50 was won by the Denver Broncos."""
    a = engine.answer(["Which NFL team won Super Bowl 50?"], 5)[0]
    assert a.best.answer == "Denver Broncos"


def test_over_long_question_is_invalid(engine: QAEngine) -> None:
    with pytest.raises(InvalidInput, match="tokens") as e:
        engine.answer(["why " * 100], 5)
    assert e.value.param == "question"


def test_index_of_another_embedder_is_refused(small_home: Path, tmp_path: Path) -> None:
    """The block embedder is identified by content: the same files under another model name serve the index;
    another embedder (the tiny random one) is refused."""
    same = load_model_dir(BUNDLED_MODEL, "other-name", 1)
    QAEngine(same, open_version(small_home / "indexes", "small"))
    write_model(tmp_path / "tiny")
    other = load_model_dir(tmp_path / "tiny", "tiny", 1)
    with pytest.raises(ValueError, match="built by the block embedder of minilm-squad/1"):
        QAEngine(other, open_version(small_home / "indexes", "small"))


def test_http_path_on_real_engine(small_home: Path) -> None:
    assert find_index(small_home, "minilm-squad/1") is not None
    settings = Settings(home=small_home, build_missing_index=False)
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/answer", json={"question": "Which NFL team won Super Bowl 50?"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["block"]["text"][body["start_char"]:body["end_char"]] == body["answer"]
        assert body["model"] == SERVED and body["index"].startswith("small/")
        r = c.post("/retrieve", json={"query": "Super Bowl 50 venue", "k": 4})
        scores = [b["score"] for b in r.json()["blocks"]]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True)
        r = c.post("/answer", json={"question": "why " * 100})
        assert r.status_code == 422 and r.json()["error"]["param"] == "question"
        r = c.post("/answer", json={"question": "Where was Super Bowl 50 played?", "reader_beam_size": 3})
        assert r.status_code == 200
        metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(c.get("/metrics").text) for s in fam.samples}
    model = (("model", SERVED),)
    # the two answers read 5 and 3 rows and the readiness check at start 1 (one question, reader beam 1, through
    # the batcher like any request), each call in one or more passes
    assert metrics[("realmqa_reader_pass_rows_sum", model)] == 5 + 3 + 1
    assert 3 <= metrics[("realmqa_reader_pass_rows_count", model)] <= 9
    assert metrics[("realmqa_reader_tokens_total", (("kind", "real"), *model))] > 0


def test_registry_without_index_and_without_build_fails_clearly(tmp_path: Path) -> None:
    from tests.conftest import make_home

    home = make_home(tmp_path / "h")
    with pytest.raises(FileNotFoundError, match="no index"):
        Registry.from_home(home, build_missing=False)
