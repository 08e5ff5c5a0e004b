"""An app on a real uvicorn server on 127.0.0.1 in a thread of the test process, for tests that need real HTTP
(the client, ``realmqa eval``, ``realmqa ask``, the browser) but want the app's state at hand."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


@contextmanager
def serve_in_thread(app: FastAPI, timeout_s: float = 120.0) -> Iterator[str]:
    """Serve ``app`` (lifespan included) on a free loopback port; yields its base URL, stops it on exit.

    Raises:
        AssertionError: the server did not start within ``timeout_s`` (its thread died or took too long).
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
