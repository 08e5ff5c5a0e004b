"""Closed-loop load on a running realmqa: for each concurrency level, that many clients send requests back to
back for a fixed time; prints requests/s, p50/p90/p99 latency and the errors (by status).

    python bench/load.py --url http://127.0.0.1:8000 --concurrency 1,8,32 --duration 30
    python bench/load.py --url ... --route retrieve --questions questions.jsonl

Questions: JSON Lines with a "question" field, or the built-in SQuAD-style list. Any URL works; keep load
tests on hosts you run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx

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


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


async def level(url: str, route: str, questions: list[str], concurrency: int, duration: float,
                timeout: float) -> tuple[int, list[float], Counter[str], float]:
    """(requests, latencies in s of the 200s, error counts by status or exception, elapsed s)."""
    lat: list[float] = []
    errors: Counter[str] = Counter()
    counter = itertools.count()
    key = "question" if route == "answer" else "query"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        end = start + duration

        async def worker() -> None:
            while time.perf_counter() < end:
                q = questions[next(counter) % len(questions)]
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"/{route}", json={key: q})
                except httpx.HTTPError as e:
                    errors[type(e).__name__] += 1
                    continue
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors[str(r.status_code)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(lat) + sum(errors.values()), lat, errors, elapsed


def load_questions(path: str | None) -> list[str]:
    if not path:
        return DEFAULT_QUESTIONS
    return [json.loads(line)["question"] for line in Path(path).read_text().splitlines() if line.strip()]


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--route", choices=["answer", "retrieve"], default="answer")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds at concurrency 1 first, not reported")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s")
    p.add_argument("--questions", help="JSON Lines with a 'question' field (default: a built-in list)")
    a = p.parse_args()
    questions = load_questions(a.questions)
    if a.warmup > 0:
        await level(a.url, a.route, questions, 1, a.warmup, a.timeout)
    print(f"{a.url}/{a.route}, {a.duration:.0f} s per level")
    print(f"{'conc':>5} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7}  by kind")
    for c in (int(x) for x in a.concurrency.split(",")):
        n, lat, errors, elapsed = await level(a.url, a.route, questions, c, a.duration, a.timeout)
        ms = [x * 1e3 for x in lat] or [float("nan")]
        print(f"{c:>5} {n:>9} {len(lat) / elapsed:>8.1f} {statistics.median(ms):>8.1f} {percentile(ms, 90):>8.1f} "
              f"{percentile(ms, 99):>8.1f} {sum(errors.values()):>7}  {dict(errors) or ''}")


if __name__ == "__main__":
    asyncio.run(main())
