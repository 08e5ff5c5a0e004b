"""index.home (versions, refs, lookups) and realm_core.model_spec (model.json, the block embedder's content id)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from index.home import Home, parse_version, split_ref
from realm_core.model_spec import ModelDirError, ModelSpec
from tests.service.tiny_home import write_model


@pytest.mark.parametrize("text,version", [("1", 1), ("42", 42), ("0", None), ("01", None), ("²", None),
                                          ("١", None), ("-1", None), ("+1", None), (" 1", None), (".staging-1", None),
                                          ("1.0", None), ("", None)])
def test_versions_are_ascii_digits(text: str, version: int | None) -> None:
    assert parse_version(text) == version


def test_split_ref() -> None:
    assert split_ref("tiny") == ("tiny", None) and split_ref("tiny/3") == ("tiny", 3)
    for bad in ("tiny/x", "tiny/²", "tiny/", "/3", ".hidden", "a/b/c", "tiny/03"):
        with pytest.raises(ValueError):
            split_ref(bad)


def test_model_lookups_skip_what_is_not_a_version(tmp_path: Path) -> None:
    home = Home(tmp_path)
    write_model(tmp_path / "models" / "tiny" / "1")
    write_model(tmp_path / "models" / "tiny" / "2", seed=2)
    (tmp_path / "models" / "tiny" / "²").mkdir()
    (tmp_path / "models" / "tiny" / ".staging-x").mkdir()
    (tmp_path / "models" / "empty").mkdir()
    assert home.model_names() == ["tiny"] and home.model_versions("tiny") == [1, 2]
    assert home.resolve_model("tiny") == ("tiny", 2) and home.resolve_model("tiny/1") == ("tiny", 1)
    with pytest.raises(LookupError):
        home.resolve_model("tiny/3")
    mv = home.model_version("tiny/1")
    assert mv.ref == "tiny/1" and mv.root == tmp_path / "models" / "tiny" / "1" and mv.spec.block_max_tokens == 64


def test_model_spec_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    write_model(tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "model.json").read_text())
    (tmp_path / "m" / "model.json").write_text(json.dumps({**raw, "future_field": "int8"}))
    spec = ModelSpec.read(tmp_path / "m")
    assert spec.extra == {"future_field": "int8"} and spec.block_embedder is None and spec.block == spec.query_embedder
    spec.write(tmp_path / "m")
    written = json.loads((tmp_path / "m" / "model.json").read_text())
    assert written == {**raw, "future_field": "int8", "reader_truncation": "only_block", "reader_question": "text",
                       "precision": "fp32"}
    assert ModelSpec.read(tmp_path / "m") == spec


@pytest.mark.parametrize("content,match", [(b"\xff{", "cannot be read"), (b"{", "cannot be read"),
                                           (b"[]", "not a JSON object"), (b'{"reader": {}}', "lacks field")])
def test_a_bad_model_json_names_the_problem(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "model.json").write_bytes(content)
    with pytest.raises(ModelDirError, match=match):
        ModelSpec.read(tmp_path)


def test_the_block_embedder_id_is_its_content(tmp_path: Path) -> None:
    """Same embedder files (another reader, another name): same id; other weights: another id; a cached id
    in model.json is what counts."""
    write_model(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "reader.safetensors").write_bytes(b"another reader")  # not part of the block embedder
    write_model(tmp_path / "c", seed=7)
    ids = {k: ModelSpec.read(tmp_path / k).block_embedder_id(tmp_path / k) for k in "abc"}
    assert ids["a"] == ids["b"] != ids["c"] and len(ids["a"]) == 64
    cached = ModelSpec.read(tmp_path / "c").with_embedder_id(tmp_path / "c")
    assert cached.embedder_id == ids["c"]
    cached.write(tmp_path / "c")
    (tmp_path / "c" / "embedder.safetensors").unlink()  # the cached id no longer needs the files
    assert ModelSpec.read(tmp_path / "c").block_embedder_id(tmp_path / "c") == ids["c"]


def test_model_staging_of_a_dead_process_is_swept_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    """Regression: convert-hf's model staging directory had no lock, so no sweep could tell a dead one from a
    live one, and one a killed conversion left stayed forever."""
    home = Home(tmp_path)
    code = ("import os, sys; from index.home import Home; s = Home(sys.argv[1]).new_model_staging('fresh'); "
            "(s.path / 'weights').write_bytes(b'x'); print(s.path, flush=True); os._exit(0)")  # dies holding it
    dead = Path(subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, capture_output=True,
                               text=True).stdout.strip())
    live = home.new_model_staging("fresh")
    assert dead.is_dir() and live.path.is_dir() and dead.parent == live.path.parent == tmp_path / "models" / "fresh"
    try:
        assert home.remove_dead_scratch(lambda job_id: True) == [dead]
        assert not dead.exists() and not dead.with_name(dead.name + ".lock").exists() and live.path.is_dir()
        assert home.model_names() == []  # a model with only staging has no version
    finally:
        live.release()
    assert not live.path.exists() and list((tmp_path / "models" / "fresh").iterdir()) == []
