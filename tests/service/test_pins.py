"""Pinned index versions: a rollback survives a restart (real ``realmqa serve`` processes); an unreadable
manifest never stops the start; polling follows a pin another replica wrote; re-activating the served version
does nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from index.home import Home
from index.pins import pin_key, read_pins, set_pins
from index.pipeline import build_from_corpus
from index.version import version_files
from service.registry import Registry
from tests.service.serve_process import start_serve
from tests.service.tiny_home import write_corpus, write_model

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def home(tmp_path: Path) -> Home:
    """Model tiny/1 with index tiny versions 1 and 2 (two corpora, ids one-* and two-*)."""
    write_model(tmp_path / "models" / "tiny" / "1")
    home = Home(tmp_path)
    for v, name in ((1, "one"), (2, "two")):
        write_corpus(tmp_path / f"{name}.jsonl", 12, seed=v)
        lines = (tmp_path / f"{name}.jsonl").read_text().replace('"id": "b', f'"id": "{name}-')
        (tmp_path / f"{name}.jsonl").write_text(lines)
        assert build_from_corpus(home, "tiny", "tiny", tmp_path / f"{name}.jsonl").version == v
    return home


def pin(home: Home, model: str = "tiny/1") -> str:
    """The pins file key of a model version: its block embedder's."""
    return pin_key(model, home.model_version(model).embedder_id)


def served_index(url: str) -> str:
    r = httpx.post(url + "/retrieve", json={"query": "alpha bravo", "k": 1}, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["index"])


def test_a_rollback_survives_a_restart(home: Home) -> None:
    """Regression: after rolling back to version 1 and restarting, the service served version 2 again."""
    env = {"REALMQA_ADMIN_TOKEN": TOKEN, "REALMQA_BUILD_MISSING_INDEX": "false"}
    proc, url = start_serve(home.root, env)
    try:
        assert served_index(url) == "tiny/2"
        r = httpx.post(url + "/v1/indexes/tiny/versions/1/activate", headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        assert served_index(url) == "tiny/1"
    finally:
        proc.terminate()
        proc.wait(60)
    assert read_pins(home) == {pin(home): "tiny/1"}
    proc, url = start_serve(home.root, env)
    try:
        assert served_index(url) == "tiny/1"
        r = httpx.post(url + "/retrieve", json={"query": "alpha bravo", "k": 3}, timeout=60)
        assert all(b["id"].startswith("one-") for b in r.json()["blocks"])
    finally:
        proc.terminate()
        proc.wait(60)


def test_a_manifest_with_bad_utf8_is_listed_as_unreadable_and_the_service_starts(home: Home) -> None:
    manifest = version_files(home.index_dir("tiny", 2)).manifest
    manifest.write_bytes(manifest.read_bytes().replace(b'"tiny"', b'"tiny\xff"', 1))
    proc, url = start_serve(home.root, {"REALMQA_BUILD_MISSING_INDEX": "false"})
    try:
        assert served_index(url) == "tiny/1"
        versions = httpx.get(url + "/v1/indexes", timeout=60).json()["indexes"][0]["versions"]
        by_version = {v["version"]: v for v in versions}
        assert by_version[1]["state"] == "ok" and by_version[1]["served_by"] == ["tiny/1"]
        assert by_version[2]["state"] == "unreadable" and "utf-8" in by_version[2]["error"]
    finally:
        proc.terminate()
        proc.wait(60)


def test_polling_follows_a_pin_written_by_another_replica(home: Home) -> None:
    a, b = Registry.from_home(home.root, build_missing=False), Registry.from_home(home.root, build_missing=False)
    assert a.get(None).index_ref == b.get(None).index_ref == "tiny/2"
    a.activate_index("tiny", 1)  # a rollback on replica A
    assert b.poll_indexes() == ["tiny/1"] and b.get(None).index_ref == "tiny/1"
    assert b.poll_indexes() == [] and a.poll_indexes() == []  # nothing new: no activation, no flapping
    assert a.get(None).index_ref == "tiny/1"


def test_reactivating_the_served_version_does_nothing(home: Home) -> None:
    r = Registry.from_home(home.root, build_missing=False)
    events: list[tuple[str, str, str]] = []
    r.observers.append(lambda *e: events.append(e))
    engine = r.get(None)
    index_before = engine.index  # type: ignore[attr-defined]
    assert [e.model_ref for e in r.activate_index("tiny", 2)] == ["tiny/1"]
    assert engine.index is index_before and events == []  # type: ignore[attr-defined]
    assert read_pins(home) == {pin(home): "tiny/2"}  # pinned all the same


def test_a_rejected_version_is_closed_and_pins_unchanged(home: Home) -> None:
    r = Registry.from_home(home.root, build_missing=False)
    f = version_files(home.index_dir("tiny", 1)).blocks
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(Exception, match="bytes, the manifest says"):
        r.activate_index("tiny", 1)
    assert r.get(None).index_ref == "tiny/2" and read_pins(home) == {}


def test_an_unreadable_pins_file_is_ignored(home: Home, caplog: pytest.LogCaptureFixture) -> None:
    home.pins_path.write_bytes(b"\xff{")
    assert read_pins(home) == {} and "cannot be read" in caplog.text
    assert Registry.from_home(home.root, build_missing=False).get(None).index_ref == "tiny/2"
    assert set_pins(home, {"tiny/1": "tiny/1"}) == {"tiny/1": "tiny/1"}
    assert json.loads(home.pins_path.read_text()) == {"tiny/1": "tiny/1"}


def test_a_rollback_holds_for_a_new_model_version_with_the_same_block_embedder(home: Home) -> None:
    """Regression: pins were keyed by model version, so a reader-only update (tiny/2, same block embedder)
    started on the newest index again, undoing the rollback made under tiny/1."""
    Registry.from_home(home.root, build_missing=False).activate_index("tiny", 1)  # rollback under tiny/1
    shutil.copytree(home.model_dir("tiny", 1), home.model_dir("tiny", 2))
    spec = json.loads((home.model_dir("tiny", 2) / "model.json").read_text())
    (home.model_dir("tiny", 2) / "model.json").write_text(json.dumps({**spec, "card": {"weights": "reader update"}}))
    assert pin(home, "tiny/2") == pin(home, "tiny/1")
    r = Registry.from_home(home.root, build_missing=False)
    assert r.get(None).model_ref == "tiny/2" and r.get(None).index_ref == "tiny/1"
    b = Registry.from_home(home.root, build_missing=False)
    r.activate_index("tiny", 2)  # under tiny/2: the pin is the block embedder's, another replica follows it
    assert read_pins(home) == {pin(home): "tiny/2"}
    assert b.poll_indexes() == ["tiny/2"] and b.get(None).index_ref == "tiny/2"


def test_a_pin_under_a_model_ref_is_still_honoured(home: Home) -> None:
    """Pins files written before embedder keys name the model version."""
    set_pins(home, {"tiny/1": "tiny/1"})
    assert Registry.from_home(home.root, build_missing=False).get(None).index_ref == "tiny/1"
    set_pins(home, {pin(home): "tiny/2"})  # the block embedder's pin wins
    assert Registry.from_home(home.root, build_missing=False).get(None).index_ref == "tiny/2"
