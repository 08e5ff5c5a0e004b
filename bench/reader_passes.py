"""Engine ms per question, in process, for several reader-pass fixed costs (``overhead_tokens`` of
``realm_core.qa.plan_passes``; -1: the earlier rule, at most 12.5% padding a row): the bundled default
(model version 3, hybrid index version 2, 2 torch threads) one at a time and at batch 8, or a tiny HF REALM home
(``bench/tiny_realm_home.py``, 1 thread) one at a time and at batches 16 and 32::

    python bench/reader_passes.py bundled -1,32,128
    python bench/reader_passes.py tiny -1,128,512 --home HOME
"""
import json
import sys
import time

import torch

from realm_core import qa
from service.evaluate import load_questions
from service.registry import Registry

orig = qa.read_beams


def run(e, qs, b, n):  # type: ignore[no-untyped-def]
    e.answer(qs[:b], 5)
    t = time.perf_counter()
    passes = k = 0
    for i in range(0, n, b):
        r = e.answer(qs[i:i + b], 5)
        passes += len(r[0].read_stats.pass_rows)
        k += len(qs[i:i + b])
    return (time.perf_counter() - t) / k * 1e3, passes / (k / b)


which = sys.argv[1]
if which == "bundled":
    torch.set_num_threads(2)
    e = Registry.from_home("service/default", "minilm-squad/3", False).get(None)
    qs = [q.question for q in load_questions("service/default/heldout/squad-train-heldout.json")][:40]
    sizes = [(1, 24), (8, 40)]
else:
    torch.set_num_threads(1)
    home = sys.argv[sys.argv.index("--home") + 1]
    e = Registry.from_home(home, "tiny-realm", False).get(None)
    qs = [json.loads(line)["question"] for line in open(f"{home}/questions.jsonl")] * 4
    sizes = [(1, 100), (16, 160), (32, 192)]
new_plan = qa.plan_passes


def greedy(lengths, max_pass_tokens, _=0, max_padding=0.125):  # type: ignore[no-untyped-def]
    """The planner before: a row joins the pass if its padding is at most 12.5% of the pass's length."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    passes, cur, T = [], [], 0
    for i in order:
        if cur and (lengths[i] < (1.0 - max_padding) * T or (len(cur) + 1) * T > max_pass_tokens):
            passes.append(cur)
            cur = []
        if not cur:
            T = lengths[i]
        cur.append(i)
    if cur:
        passes.append(cur)
    return passes


for ov in [int(x) for x in sys.argv[2].split(",")]:
    qa.plan_passes = greedy if ov < 0 else new_plan
    qa.read_beams = lambda *a, ov=ov, **k: orig(*a, overhead_tokens=max(ov, 0), **k)
    out = []
    for b, n in sizes:
        ms, p = run(e, qs, b, n)
        out.append(f"batch {b}: {ms:.2f} ms/q ({p:.2f} passes/batch)")
    print(f"{which} overhead {ov:4d}: " + "; ".join(out), flush=True)
