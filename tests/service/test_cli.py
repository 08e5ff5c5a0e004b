"""``realmqa serve`` and ``realmqa index build`` as a user runs them: real processes on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_home, write_corpus
from tests.service.serve_process import start_serve


def test_index_build_then_serve_builds_nothing_and_answers(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    write_corpus(tmp_path / "c.jsonl", 5)
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "index", "build", "--home", str(home), "--model", "minilm-squad",
         "--corpus", str(tmp_path / "c.jsonl"), "--index", "nd"],
        capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "nd/1"
    proc, url = start_serve(home, {"REALMQA_BUILD_MISSING_INDEX": "false"})
    try:
        r = httpx.post(url + "/answer", json={"question": "What sits on top of the Main Building at Notre Dame?"},
                       timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["index"] == "nd/1"
        assert r.json()["block"]["id"].startswith("train/University_of_Notre_Dame/")
    finally:
        proc.terminate()
        proc.wait(30)


def test_bad_setting_is_named(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--home", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "setting home (REALMQA_HOME)" in out.stderr


def test_train_retriever_refuses_a_non_ascii_version_with_a_message(tmp_path: Path) -> None:
    """Regression: ``'²'.isdigit()`` is true, so ``--model m/²`` reached ``int('²')`` and died with a traceback."""
    from service.cli import main
    from tests.service.tiny_home import write_model

    write_model(tmp_path / "models" / "m" / "1")  # so that the index's version is the one refused
    for model, index in (("m/²", "m/1"), ("m/1", "m/²")):
        with pytest.raises(SystemExit) as e:
            main(["train-retriever", "--home", str(tmp_path), "--model", model, "--index", index,
                  "--squad", str(tmp_path / "none.json"), "--work", str(tmp_path / "w"), "--out-model", "o"])
        assert str(e.value.code).startswith("realmqa: 'm/²'") and "ASCII digits" in str(e.value.code)
