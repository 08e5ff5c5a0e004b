"""``realmqa index add-bm25`` as a command, and a hybrid version served over
HTTP: the newest version of the model's index, ``bm25_ms``/``fuse_ms`` in ``timings_ms`` and the metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.cli import main
from service.settings import Settings
from tests.conftest import make_home


def test_add_bm25_then_serve_hybrid(small_home: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    home = make_home(tmp_path / "h")
    shutil.copytree(small_home / "indexes" / "small" / "1", home / "indexes" / "small" / "1")
    main(["index", "add-bm25", "--home", str(home), "--index", "small", "--fusion-rule", "rrf"])
    assert capsys.readouterr().out.strip() == "small/2"
    manifest = json.loads((home / "indexes" / "small" / "2" / "manifest.json").read_text())
    assert manifest["extra"]["fusion"]["rule"] == "rrf" and manifest["parts"]["bm25"]["dir"] == "bm25"
    with TestClient(create_app(Settings(home=home, build_missing_index=False))) as c:
        r = c.post("/answer", json={"question": "Which NFL team represented the AFC at Super Bowl 50?"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["index"] == "small/2" and body["answer"] == "Denver Broncos"
        assert {"embed_ms", "search_ms", "bm25_ms", "fuse_ms", "read_ms"} <= set(body["timings_ms"])
        r = c.post("/retrieve", json={"query": "Venite Ad Me Omnes", "k": 3})
        assert [b["rank"] for b in r.json()["blocks"]] == [1, 2, 3]
        metrics = c.get("/metrics").text
        # the two requests and the readiness check at start (one question through the batcher)
        served = body["model"]  # the newest version of the bundled model
        assert f'realmqa_bm25_duration_seconds_count{{model="{served}"}} 3.0' in metrics
        assert f'realmqa_fuse_duration_seconds_count{{model="{served}"}} 3.0' in metrics


def test_add_bm25_bad_weight_is_named(small_home: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "service.cli", "index", "add-bm25", "--home", str(small_home),
                          "--index", "small", "--fusion-weight", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "fusion weight" in out.stderr
