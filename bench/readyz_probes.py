"""What ``/readyz`` probes cost a running service: the server's CPU time per probe (from ``/proc/PID/stat``),
and ``/answer`` throughput alone and with probers running beside it.

    python bench/readyz_probes.py --url http://127.0.0.1:8000 --pid $(pgrep -f 'realmqa serve') \
        --questions service/default/heldout/squad-train-heldout.json --probes 2000 \
        --clients 8 --probers 50 --periods 1,0 --duration 10 --rounds 2   # + --max-words 10 on the tiny model

Protocol: ``--clients`` loops send ``/answer`` back to back in this process; the ``--probers`` loops run in a
separate process (so that they never delay the answer clients' own event loop) and each sends ``GET /readyz``
every ``period`` seconds (start to start, each prober at a random phase), or back to back with period 0.
A period of 1 s with 50 probers is 50 probes/s, already far more than an orchestrator sends (Kubernetes'
default ``periodSeconds`` is 10, per probe kind and pod); period 0 is a CPU-saturation test, not a probe
pattern. Each round measures "alone", then every period; the answers/s ratio is against the same round's
"alone". Per phase it prints the server's CPU seconds per wall second (``/proc/PID/stat``; the machine's
cores bound it), the probes sent per second and their p50/p99 latency, the probers' own CPU share, and the
engine milliseconds per answer (the stage sums of ``/metrics``: embed + search + bm25 + fuse + read, each
request's share of its batch) — if that grows under probes, the engine thread is being slowed.

The probers and the answer clients share the machine with the server: on a small CPU their own work
(sending and parsing requests) takes cycles from the server, so the ratio understates what probes cost a
server on its own machine; the CPU time per probe is the server's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import statistics
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.evaluate import load_questions

STAGES = ("embed", "search", "bm25", "fuse", "read")


def server_cpu_s(pid: int) -> float:
    """utime + stime of the process, seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_s(url: str) -> float:
    """Sum over requests of their engine seconds (the stage histograms' sums in ``/metrics``)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    total = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name in {f"realmqa_{s}_duration_seconds" for s in STAGES}:
            total += sum(s.value for s in fam.samples if s.name.endswith("_sum"))
    return total


async def _answer_loops(url: str, questions: list[str], clients: int, duration_s: float) -> int:
    stop = time.monotonic() + duration_s
    done = 0

    async def ask(c: httpx.AsyncClient, i: int) -> None:
        nonlocal done
        while time.monotonic() < stop:
            r = await c.post("/answer", json={"question": questions[i % len(questions)]})
            r.raise_for_status()
            done += 1
            i += clients

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients + 2)) as c:
        await asyncio.gather(*(ask(c, i) for i in range(clients)))
    return done


async def _probe_loops(url: str, probers: int, period_s: float, start_at: float, duration_s: float) -> list[float]:
    """Probe latencies (s) of ``probers`` loops, each probing every ``period_s`` (0: back to back)."""
    latencies: list[float] = []
    rng = random.Random(0)

    async def probe(c: httpx.AsyncClient, phase: float) -> None:
        nxt = start_at + phase
        stop = start_at + duration_s
        while True:
            now = time.monotonic()
            if nxt > now:
                await asyncio.sleep(nxt - now)
            if time.monotonic() >= stop:
                return
            t0 = time.monotonic()
            (await c.get("/readyz")).raise_for_status()
            latencies.append(time.monotonic() - t0)
            nxt = max(nxt + period_s, time.monotonic()) if period_s else time.monotonic()

    limits = httpx.Limits(max_connections=probers + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        await asyncio.gather(*(probe(c, rng.random() * period_s) for _ in range(probers)))
    return latencies


def _prober_process(url: str, probers: int, period_s: float, start_at: float, duration_s: float,
                    out: mp.Queue) -> None:
    cpu0 = time.process_time()
    lat = asyncio.run(_probe_loops(url, probers, period_s, start_at, duration_s))
    out.put((lat, time.process_time() - cpu0))


def phase(a: argparse.Namespace, questions: list[str], period_s: float | None) -> dict[str, float]:
    """One measured phase: answer loops for ``a.duration`` s, with probers at ``period_s`` (None: alone)."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    proc = None
    start_at = time.monotonic() + (3.0 if period_s is not None else 0.2)  # the prober process imports first
    if period_s is not None:
        proc = ctx.Process(target=_prober_process, args=(a.url, a.probers, period_s, start_at, a.duration, out))
        proc.start()
    time.sleep(max(0.0, start_at - time.monotonic()))
    eng0, cpu0, t0 = engine_s(a.url), server_cpu_s(a.pid), time.monotonic()
    mine0 = time.process_time()
    done = asyncio.run(_answer_loops(a.url, questions, a.clients, a.duration))
    wall = time.monotonic() - t0
    res = {"answers_s": done / wall, "server_cpu": (server_cpu_s(a.pid) - cpu0) / wall,
           "clients_cpu": (time.process_time() - mine0) / wall,
           "engine_ms": 1e3 * (engine_s(a.url) - eng0) / max(done, 1), "probes_s": 0.0, "p50_ms": 0.0,
           "p99_ms": 0.0, "probers_cpu": 0.0}
    if proc is not None:
        lat, cpu = out.get(timeout=a.duration + 120)
        proc.join()
        lat.sort()
        res.update(probes_s=len(lat) / a.duration, probers_cpu=cpu / a.duration,
                   p50_ms=1e3 * statistics.median(lat) if lat else 0.0,
                   p99_ms=1e3 * lat[int(0.99 * (len(lat) - 1))] if lat else 0.0)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True, help="the realmqa serve process (for its CPU time)")
    p.add_argument("--questions", required=True)
    p.add_argument("--probes", type=int, default=2000, help="sequential probes for the CPU-per-probe figure")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--probers", type=int, default=50)
    p.add_argument("--periods", default="1,0",
                   help="comma-separated seconds between one prober's probes; 0 = back to back")
    p.add_argument("--max-words", type=int, default=0,
                   help="only questions of at most this many words (0: all; the tiny model takes 24 wordpieces)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--rounds", type=int, default=1, help="alone + every period, this many times")
    a = p.parse_args()
    a.url = a.url.rstrip("/")
    qs = [q.question for q in load_questions(a.questions) if not a.max_words or len(q.question.split()) <= a.max_words]
    random.Random(0).shuffle(qs)
    with httpx.Client(base_url=a.url, timeout=60) as c:
        c.get("/readyz").raise_for_status()
        cpu0, t0 = server_cpu_s(a.pid), time.perf_counter()
        for _ in range(a.probes):
            c.get("/readyz").raise_for_status()
        cpu1, t1 = server_cpu_s(a.pid), time.perf_counter()
    print(f"/readyz: {a.probes} probes, server CPU {1e3 * (cpu1 - cpu0) / a.probes:.3f} ms per probe, "
          f"wall {1e3 * (t1 - t0) / a.probes:.3f} ms per probe (one client)")
    asyncio.run(_answer_loops(a.url, qs, a.clients, 2.0))  # warm-up
    periods = [float(x) for x in a.periods.split(",")]
    print(f"/answer with {a.clients} clients, {a.probers} probers in another process, {a.duration:.0f} s per phase")
    print(f"{'round':>5} {'probers':>16} {'answers/s':>9} {'ratio':>6} {'probes/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'server cpu':>10} {'probers cpu':>11} {'clients cpu':>11} {'engine ms/ans':>13}")
    for r in range(1, a.rounds + 1):
        alone = None
        for period in (None, *periods):
            res = phase(a, qs, period)
            alone = alone or res["answers_s"]
            label = "none" if period is None else ("back to back" if period == 0 else f"every {period:g} s")
            print(f"{r:>5} {label:>16} {res['answers_s']:>9.2f} {res['answers_s'] / alone:>6.3f} "
                  f"{res['probes_s']:>8.0f} {res['p50_ms']:>7.2f} {res['p99_ms']:>7.2f} {res['server_cpu']:>10.2f} "
                  f"{res['probers_cpu']:>11.2f} {res['clients_cpu']:>11.2f} {res['engine_ms']:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
