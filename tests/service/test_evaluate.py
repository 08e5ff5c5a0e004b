"""service.evaluate and ``realmqa eval`` against a real server on loopback (fake engine behind it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import create_app
from service.evaluate import Question, evaluate, load_questions
from service.registry import Registry
from service.settings import Settings
from tests.service.fake_engine import FakeEngine
from tests.service.serve_thread import serve_in_thread


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("h")
    (home / "models").mkdir()
    with serve_in_thread(create_app(Settings(home=home), Registry({"fake": FakeEngine()}))) as url:
        yield url


def test_em_f1_recall(url: str) -> None:
    qs = [Question("Denver won Super Bowl 50", ["Denver"]),        # EM 1, block b0 first
          Question("Carolina Panthers lost", ["the Panthers"]),     # answer "Carolina": EM 0, F1 0
          Question("Notre Dame university", ["Catholic", "x"])]     # answer "Notre": EM 0; recall hit
    r = evaluate(url, qs, ks=(1, 2))
    assert r["questions"] == 3
    assert r["em"] == pytest.approx(100 / 3)
    assert r["f1"] == pytest.approx(100 / 3)
    assert r["recall@1"] == pytest.approx(100.0)
    assert r["answer_ms_p50"] > 0


def test_load_questions_squad_and_jsonl(tmp_path: Path) -> None:
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": "1", "question": "q1?", "answers": [{"text": "a1", "answer_start": 0}]}]}]}]}
    (tmp_path / "s.json").write_text(json.dumps(squad))
    (tmp_path / "q.jsonl").write_text('{"question": "q2?", "answer": ["a2", "b2"]}\n')
    assert load_questions(tmp_path / "s.json") == [Question("q1?", ["a1"])]
    assert load_questions(tmp_path / "q.jsonl") == [Question("q2?", ["a2", "b2"])]
    (tmp_path / "bad.jsonl").write_text('{"q": 1}\n')
    with pytest.raises(ValueError, match=":1:"):
        load_questions(tmp_path / "bad.jsonl")


def test_cli_eval_prints_figures(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    (tmp_path / "q.jsonl").write_text('{"question": "Denver won", "answer": ["Denver"]}\n')
    main(["eval", "--questions", str(tmp_path / "q.jsonl"), "--url", url, "--k", "1,3",
          "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "em: 100.00" in out and "recall@3" in out
    assert json.loads((tmp_path / "r.json").read_text())["recall@1"] == 100.0
