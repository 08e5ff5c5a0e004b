"""``realmqa train-retriever`` as a command on a tiny random home: trains, publishes a model version that serves
the index its base's block embedder built (identity by content) and refuses one built by another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from index.version import open_version
from realm_core.model_dir import load_model_dir
from service.cli import main
from service.engine import QAEngine
from tests.service.tiny_home import make_tiny_home


def test_train_retriever_command_publishes_a_model_version(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    home = make_tiny_home(tmp_path / "tiny", blocks=60, versions=2)  # tiny/2: another random block embedder
    blocks = [json.loads(line) for line in (home / "corpus.jsonl").read_text().splitlines()]
    squad = {"data": [{"title": "t", "paragraphs": [
        {"context": b["text"], "qas": [{"question": " ".join(b["text"].split()[:3]) + "?",
                                        "answers": [{"text": b["text"].split()[-1]}]}]} for b in blocks]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    args = ["train-retriever", "--home", str(home), "--model", "tiny/1", "--index", "tiny/1",
            "--squad", str(tmp_path / "squad.json"), "--gold-id", "b{paragraph}", "--out-model", "tiny-ft",
            "--work", str(tmp_path / "work"), "--steps", "2", "--batch-size", "4", "--top-k", "3"]
    main(args)
    assert capsys.readouterr().out.strip() == "tiny-ft/1"
    card = json.loads((home / "models" / "tiny-ft" / "1" / "model.json").read_text())["card"]["query_embedder"]
    assert card["steps"] == 2 and card["base"] == "tiny/1" and card["train_questions"] == 60
    ft = load_model_dir(home / "models" / "tiny-ft" / "1", "tiny-ft", 1)
    base_index = open_version(home / "indexes", "tiny", 1)
    assert base_index.manifest.embedder == "tiny/1"  # built by the base version, not by tiny-ft/1
    engine = QAEngine(ft, base_index)
    r = engine.retrieve(["who red river?"], 3)[0]
    assert len(r.blocks) == 3 and r.index_ref == "tiny/1"
    assert engine.answer(["who red river?"], 2)[0].best.block.block.id
    with pytest.raises(ValueError, match="built by the block embedder of tiny/2"):
        QAEngine(ft, open_version(home / "indexes", "tiny", 2))
