"""``realmqa serve`` as a real process on loopback, for the tests that need one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served(subprocess.Popen[str]):
    """A ``realmqa serve`` process whose merged stdout/stderr a thread drains into :meth:`output` (a server
    logs a JSON line per request; an unread pipe would fill and block it)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        super().__init__(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._lines: list[str] = []
        self._drain = threading.Thread(target=lambda: self._lines.extend(self.stdout or ()), daemon=True)
        self._drain.start()

    def output(self, tail: int | None = None) -> str:
        """What the process wrote so far (all of it once it has exited); ``tail``: only its last lines."""
        if self.poll() is not None:
            self._drain.join(10)
        lines = list(self._lines)
        return "".join(lines if tail is None else lines[-tail:])


def start_serve(home: Path, env: dict[str, str] | None = None, timeout_s: float = 120.0) -> tuple[Served, str]:
    """Start ``realmqa serve --home HOME`` on a free port and wait until ``/readyz`` answers 200.

    Returns the process (its output in :meth:`Served.output`) and its base URL; the caller stops it.

    Raises:
        AssertionError: the process exited, or was not ready within ``timeout_s``; with its output.
    """
    port = free_port()
    proc = Served([sys.executable, "-m", "service.cli", "serve", "--home", str(home), "--port", str(port)],
                  {**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=30).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise AssertionError(proc.output() or f"exited {proc.returncode}")
        time.sleep(0.3)
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"realmqa serve was not ready within {timeout_s} s:\n{proc.output(tail=50)}")
