"""Closed-loop load on a running realmqa: for each concurrency level, that many clients send requests back to
back for a fixed time; prints requests/s, p50/p90/p99 latency, the errors (by status) and the CPU the load
client itself used (cores: CPU seconds per wall second, all its processes together).

    python bench/load.py --url http://127.0.0.1:8000 --concurrency 1,8,32 --duration 30
    python bench/load.py --url ... --route retrieve --questions questions.jsonl
    python bench/load.py --url ... --concurrency 1,32 --processes 2   # clients spread over 2 processes
    python bench/load.py --url ... --concurrency 1,8 --rounds 3       # each level 3 times, alternating, + medians

Closed loop: each client sends its next request when its last one is answered. With ``--processes P`` the
clients of a level are split over P processes (each its own event loop and connection pool), started together
after the processes are up, so that on a small machine one client process's event loop is not what limits
the rate; latencies and errors are pooled.

Rounds: on a small shared machine one 15-s level moves by ±10% from run to run. ``--rounds R`` runs the whole
list of levels R times (1, 8, 1, 8, ... so that a slow spell does not hit one level only), prints every round's
row, then per level a ``median`` row: the median over the rounds of its requests/s and of its p50/p90/p99.

Questions: JSON Lines with a "question" field, or the built-in SQuAD-style list. Any URL works; keep load
tests on hosts you run.

Client: aiohttp (the ``bench`` extra), whose HTTP parser is in C: on the 2-core bench machine it spent ~0.3 ms
of CPU a request against 1.3–2.7 ms for httpx (pure Python), so a load generator on the server's own cores
takes ~0.1 of a core at 500 requests/s instead of ~0.5–0.7 (bench/README.md, "Workers").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import resource
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

DEFAULT_QUESTIONS = [
    "Which NFL team represented the AFC at Super Bowl 50?",
    "Where did Super Bowl 50 take place?",
    "What sits on top of the Main Building at Notre Dame?",
    "What is the Grotto at Notre Dame?",
    "Who was the Super Bowl 50 MVP?",
    "What color was used to emphasize the 50th anniversary of the Super Bowl?",
    "When did the Scholastic Magazine of Notre dame begin publishing?",
    "How many student news papers are found at Notre Dame?",
]


@dataclass
class Result:
    """One level's outcome (of one process, or pooled)."""

    requests: int = 0
    latencies: list[float] = field(default_factory=list)  # s, of the 200s
    errors: Counter[str] = field(default_factory=Counter)  # by status or exception name
    elapsed: float = 0.0  # s, wall
    cpu_s: float = 0.0  # CPU seconds the client used over the level (user + system)

    def add(self, other: Result) -> None:
        self.requests += other.requests
        self.latencies += other.latencies
        self.errors.update(other.errors)
        self.elapsed = max(self.elapsed, other.elapsed)
        self.cpu_s += other.cpu_s


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def level(url: str, route: str, questions: list[str], concurrency: int, duration: float,
                timeout: float, first: int = 0, start_at: float | None = None) -> Result:
    """``concurrency`` closed-loop clients for ``duration`` s (from ``start_at``, a ``time.time()``, if
    given); client i starts at question ``first + i`` of the list."""
    out = Result()
    counter = itertools.count(first)
    key = "question" if route == "answer" else "query"
    target = f"{url.rstrip('/')}/{route}"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as client:
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = _cpu_s()
        start = time.perf_counter()
        end = start + duration

        async def worker() -> None:
            while time.perf_counter() < end:
                q = questions[next(counter) % len(questions)]
                t0 = time.perf_counter()
                try:
                    async with client.post(target, json={key: q}) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    out.errors[type(e).__name__] += 1
                    continue
                if status == 200:
                    out.latencies.append(time.perf_counter() - t0)
                else:
                    out.errors[str(status)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        out.elapsed = time.perf_counter() - start
        out.cpu_s = _cpu_s() - cpu0
    out.requests = len(out.latencies) + sum(out.errors.values())
    return out


def _process_level(args: tuple[str, str, list[str], int, float, float, int, float]) -> Result:
    return asyncio.run(level(*args))


def run_level(url: str, route: str, questions: list[str], concurrency: int, duration: float, timeout: float,
              processes: int) -> Result:
    """One level in this process (``processes`` ≤ 1) or split over ``processes`` processes."""
    if processes <= 1 or concurrency < 2:
        return asyncio.run(level(url, route, questions, concurrency, duration, timeout))
    n = min(processes, concurrency)
    shares = [concurrency // n + (i < concurrency % n) for i in range(n)]
    start_at = time.time() + 1.0 + 0.2 * n  # after every process has started and connected
    firsts = list(itertools.accumulate([0, *shares[:-1]]))
    with mp.get_context("spawn").Pool(n) as pool:
        parts = pool.map(_process_level, [(url, route, questions, c, duration, timeout, f, start_at)
                                          for c, f in zip(shares, firsts)])
    out = Result()
    for part in parts:
        out.add(part)
    return out


def load_questions(path: str | None) -> list[str]:
    if not path:
        return DEFAULT_QUESTIONS
    return [json.loads(line)["question"] for line in Path(path).read_text().splitlines() if line.strip()]


def table_row(conc: int, requests: int | str, rate_p50_p90_p99: Sequence[float], errors: int, client_cpu: str,
              tail: str) -> str:
    """One line of the table: concurrency, requests (or a label), req/s, p50/p90/p99 ms, errors, client CPU."""
    rate, p50, p90, p99 = rate_p50_p90_p99
    return (f"{conc:>5} {requests:>9} {rate:>8.1f} {p50:>8.1f} {p90:>8.1f} {p99:>8.1f} {errors:>7} "
            f"{client_cpu:>10}  {tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--route", choices=["answer", "retrieve"], default="answer")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds at concurrency 1 first, not reported")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s")
    p.add_argument("--processes", type=int, default=1, help="client processes a level's clients are split over")
    p.add_argument("--rounds", type=int, default=1, help="times the list of levels runs; >1 adds median rows")
    p.add_argument("--questions", help="JSON Lines with a 'question' field (default: a built-in list)")
    a = p.parse_args()
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    questions = load_questions(a.questions)
    if a.warmup > 0:
        run_level(a.url, a.route, questions, 1, a.warmup, a.timeout, 1)
    print(f"{a.url}/{a.route}, {a.duration:.0f} s per level, client processes up to {max(a.processes, 1)}")
    print(f"{'conc':>5} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'client cpu':>10}  by kind")
    levels = [int(x) for x in a.concurrency.split(",")]
    rows: dict[int, list[tuple[float, float, float, float, int]]] = {c: [] for c in levels}
    for _ in range(a.rounds):
        for c in levels:
            r = run_level(a.url, a.route, questions, c, a.duration, a.timeout, a.processes)
            ms = [x * 1e3 for x in r.latencies] or [float("nan")]
            row = (len(r.latencies) / r.elapsed, statistics.median(ms), percentile(ms, 90), percentile(ms, 99),
                   sum(r.errors.values()))
            rows[c].append(row)
            print(table_row(c, r.requests, row[:4], row[4], f"{r.cpu_s / r.elapsed:.2f}", str(dict(r.errors) or "")),
                  flush=True)
    if a.rounds > 1:
        for c in levels:
            med = [statistics.median(x[i] for x in rows[c]) for i in range(4)]
            errors = sum(x[4] for x in rows[c])
            print(table_row(c, "median", med, errors, "", f"of {a.rounds} rounds (errors: all rounds)"), flush=True)


if __name__ == "__main__":
    main()
