"""``realmqa serve`` as a real process on loopback, for the tests that need one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(home: Path, env: dict[str, str] | None = None, timeout_s: float = 120.0
                ) -> tuple[subprocess.Popen[str], str]:
    """Start ``realmqa serve --home HOME`` on a free port and wait until ``/readyz`` answers 200.

    Returns the process (stdout and stderr merged into ``proc.stdout``) and its base URL; the caller stops it.

    Raises:
        AssertionError: the process exited, or was not ready within ``timeout_s``; with its output.
    """
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--home", str(home), "--port", str(port)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=30).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read() if proc.stdout else f"exited {proc.returncode}")
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"realmqa serve was not ready within {timeout_s} s")
