"""Median and p90 latency of ``POST /answer`` on a running service, one question at a time, and the median of
each stage the service reports in the response's ``timings_ms`` (e.g. ``bm25_ms``, ``fuse_ms``, ``read_ms``).

    python bench/answer_latency.py --url http://127.0.0.1:8000 \
        --questions service/default/heldout/squad-train-heldout.json --n 50
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from service.evaluate import load_questions


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--questions", required=True)
    p.add_argument("--n", type=int, default=50)
    a = p.parse_args()
    qs = load_questions(a.questions)[: a.n]
    ms = []
    stages: dict[str, list[float]] = {}
    with httpx.Client(base_url=a.url, timeout=60) as c:
        c.post("/answer", json={"question": qs[0].question}).raise_for_status()  # warm-up
        for q in qs:
            t0 = time.perf_counter()
            r = c.post("/answer", json={"question": q.question}).raise_for_status()
            ms.append((time.perf_counter() - t0) * 1e3)
            for k, v in r.json().get("timings_ms", {}).items():
                stages.setdefault(k, []).append(float(v))
    ms.sort()
    print(f"/answer over {len(ms)} questions: median {statistics.median(ms):.1f} ms, "
          f"p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms")
    print("timings_ms medians: " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in sorted(stages.items())))


if __name__ == "__main__":
    main()
