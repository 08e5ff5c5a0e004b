"""``realmqa serve`` and ``realmqa index build`` as a user runs them: real processes on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import make_home, write_corpus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_index_build_then_serve_builds_nothing_and_answers(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    write_corpus(tmp_path / "c.jsonl", 5)
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "index", "build", "--home", str(home), "--model", "minilm-squad",
         "--corpus", str(tmp_path / "c.jsonl"), "--index", "nd"],
        capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "nd/1"
    port = _free_port()
    env = {**os.environ, "REALMQA_BUILD_MISSING_INDEX": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--home", str(home), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=30).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.5)
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
