"""schemathesis against ``realmqa serve`` on a tiny random model (a real process on loopback): every check but
positive-data acceptance, anonymous and with the admin token, a fixed seed; any finding fails the test.

The run with the token leaves out ``/readyz``: it may unload the only model, after which "not ready" (503) is
the truth; the anonymous run covers ``/readyz``."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from tests.service.serve_process import start_serve
from tests.service.tiny_home import make_tiny_home

TOKEN = "schemathesis-admin-token"
SEED = 20260212
CONFIG = Path(__file__).with_name("schemathesis.toml")


def _run(url: str, cwd: Path, *extra: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", url + "/openapi.json",
           "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--seed", str(SEED),
           "--max-examples", "25", "--workers", "1", "--generation-database", "none", "--no-color", *extra]
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    print(f"schemathesis {' '.join(extra[:1]) or 'anonymous'}: {time.monotonic() - t0:.1f} s")
    found = re.search(r"(\d+) generated", text)
    assert out.returncode == 0, text[-6000:]
    assert found, text[-3000:]
    return int(found.group(1)), text


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    home = make_tiny_home(tmp_path / "h", blocks=40)
    proc, url = start_serve(home, {"REALMQA_ADMIN_TOKEN": TOKEN, "REALMQA_TORCH_THREADS": "1"})
    try:
        anonymous, _ = _run(url, tmp_path)
        with_token, _ = _run(url, tmp_path, "--header", f"Authorization: Bearer {TOKEN}", "--exclude-path", "/readyz")
    except AssertionError:
        print(proc.output(tail=50))
        raise
    finally:
        proc.kill()  # SIGTERM draining is test_shutdown's subject
        proc.wait(30)
    print(f"schemathesis: {anonymous} cases anonymous + {with_token} with the token, 0 failures, seed {SEED}")
    assert anonymous + with_token >= 1000
