"""Seconds from ``realmqa serve`` starting to ``/readyz`` answering 200 and to its first answer, over several
starts of a fresh server process (issue 10: "first answer on a fresh clone still within seconds").

    python bench/first_answer.py --starts 3                       # the bundled default
    python bench/first_answer.py --starts 3 -- --model minilm-squad/7 --precision fp32

Arguments after ``--`` go to ``realmqa serve`` (its ``--port`` is chosen here). The first answer is that of
``--question``; the answer, model and index versions are printed with each start so that a run also checks them.
Installs and the page cache are not counted: run it once before the figures you keep if the files are cold.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_start(serve_args: list[str], question: str, timeout_s: float) -> tuple[float, float, dict]:
    """(s to /readyz 200, s to the first answer, the answer's JSON) of one fresh ``realmqa serve``.

    Raises:
        RuntimeError: the server exited, or was not ready and answering within ``timeout_s``.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the server's log goes to a file: it writes a line per request (each /readyz poll), and a pipe read only at
    # the end would fill and block it on a slow start
    log = tempfile.TemporaryFile("w+")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), *serve_args],
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            ready = None
            while time.monotonic() - t0 < timeout_s:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"realmqa serve exited {proc.returncode}: {log.read()[-2000:]}")
                try:
                    if ready is None and c.get("/readyz").status_code == 200:
                        ready = time.monotonic() - t0
                    if ready is not None:
                        r = c.post("/answer", json={"question": question})
                        if r.status_code == 200:
                            return ready, time.monotonic() - t0, r.json()
                except httpx.TransportError:  # not listening yet
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"no answer from {url} within {timeout_s} s")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--starts", type=int, default=3)
    p.add_argument("--question", default="Which NFL team won Super Bowl 50?")
    p.add_argument("--timeout-s", type=float, default=300)
    p.add_argument("serve_args", nargs="*", help="after --: arguments for realmqa serve")
    a = p.parse_args()
    ready, first = [], []
    for i in range(a.starts):
        r, f, ans = one_start(a.serve_args, a.question, a.timeout_s)
        ready.append(r)
        first.append(f)
        print(f"start {i + 1}: /readyz after {r:.2f} s, first answer after {f:.2f} s: {ans['answer']!r} "
              f"({ans['model']}, index {ans['index']})", flush=True)
    print(f"median of {a.starts}: /readyz {statistics.median(ready):.2f} s, "
          f"first answer {statistics.median(first):.2f} s")


if __name__ == "__main__":
    main()
