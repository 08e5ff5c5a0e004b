"""What ``/readyz`` probes cost a running service: the server's CPU time per probe (from ``/proc/PID/stat``),
and ``/answer`` throughput with and without probers running beside it.

    python bench/readyz_probes.py --url http://127.0.0.1:8000 --pid $(pgrep -f 'realmqa serve') \
        --questions service/default/heldout/squad-train-heldout.json --probes 2000 \
        --clients 8 --probers 50 --duration 10

The probers share the machine with the server and with the ``/answer`` clients: on a small CPU their own
work (sending and parsing requests) takes cycles from the server, so the throughput ratio understates what
probes cost a server on its own machine; the CPU time per probe is the server's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import httpx

from service.evaluate import load_questions


def server_cpu_s(pid: int) -> float:
    """utime + stime of the process, seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def answers_per_s(url: str, questions: list[str], clients: int, duration_s: float, probers: int) -> float:
    """/answer answers per second from ``clients`` concurrent loops, while ``probers`` loops GET /readyz."""
    stop = time.monotonic() + duration_s
    done = 0

    async def ask(c: httpx.AsyncClient, i: int) -> None:
        nonlocal done
        while time.monotonic() < stop:
            r = await c.post("/answer", json={"question": questions[(i + done) % len(questions)]})
            r.raise_for_status()
            done += 1
            i += clients

    async def probe(c: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            (await c.get("/readyz")).raise_for_status()

    limits = httpx.Limits(max_connections=clients + probers + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        await asyncio.gather(*(ask(c, i) for i in range(clients)), *(probe(c) for _ in range(probers)))
    return done / duration_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True, help="the realmqa serve process (for its CPU time)")
    p.add_argument("--questions", required=True)
    p.add_argument("--probes", type=int, default=2000, help="sequential probes for the CPU-per-probe figure")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--probers", type=int, default=50)
    p.add_argument("--duration", type=float, default=10.0)
    a = p.parse_args()
    qs = [q.question for q in load_questions(a.questions)]
    with httpx.Client(base_url=a.url, timeout=60) as c:
        c.get("/readyz").raise_for_status()
        cpu0, t0 = server_cpu_s(a.pid), time.perf_counter()
        for _ in range(a.probes):
            c.get("/readyz").raise_for_status()
        cpu1, t1 = server_cpu_s(a.pid), time.perf_counter()
    print(f"/readyz: {a.probes} probes, server CPU {1e3 * (cpu1 - cpu0) / a.probes:.3f} ms per probe, "
          f"wall {1e3 * (t1 - t0) / a.probes:.3f} ms per probe (one client)")
    alone = asyncio.run(answers_per_s(a.url, qs, a.clients, a.duration, 0))
    probed = asyncio.run(answers_per_s(a.url, qs, a.clients, a.duration, a.probers))
    print(f"/answer with {a.clients} clients: {alone:.2f} answers/s alone, {probed:.2f} with {a.probers} probers "
          f"looping /readyz ({probed / alone:.3f} of alone)")


if __name__ == "__main__":
    main()
