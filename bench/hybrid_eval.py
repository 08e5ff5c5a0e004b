"""recall@k of dense, BM25 and fused retrieval for a grid of fusion rules and weights, and open-setting EM/F1
of the engine in each retrieval mode, in process (the code ``/retrieve`` and ``/answer`` run).

Each list is searched once to ``--depth``; every rule of the grid is then scored from the same lists
(:func:`index.fusion.fuse`, as the engine's hybrid step does). The BM25 part is the index version's own, or
(``--bm25-in-memory``) one built here from its block store with :class:`index.bm25.BM25Index`'s defaults.
Choose the rule on questions you do not report on, e.g. SQuAD train questions outside the held-out articles:

    python bench/hybrid_eval.py --home service/default --model minilm-squad \
        --questions choice.jsonl --bm25-in-memory --grid 'rrf:0.3,0.4,0.5,0.6,0.7;normalised_sum:0.3,0.5,0.7'

``--answer N`` then answers a seeded sample of N questions (``--answer 0``: all of them) with
:class:`service.engine.QAEngine` at reader beam ``--beam`` in each of ``--modes``: ``dense`` (MIPS only),
``bm25`` (the BM25 list alone: fusion weight 0 on dense), ``hybrid`` (the version's fusion rule, or
``--fusion``); the reader adds the relevance score that the model's ``hybrid_relevance`` names: the inner
product in every mode, or (``"fused"``) the fused score in the bm25 and hybrid modes (index.hybrid).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from index.bm25 import BM25Config, BM25Index
from index.chunks import block_embedding_text
from index.faiss_index import search
from index.fusion import FusionConfig, fuse
from index.home import Home
from index.options import SearchParams
from realm_core.evaluation import has_answer
from realm_core.model_dir import embed_texts, load_model_dir
from service.evaluate import load_questions
from service.indexes import open_index
from service.registry import find_index, model_versions


def recall(I: np.ndarray, hit, ks: tuple[int, ...]) -> list[float]:
    """Percent of queries with an answer-bearing row among the first k of ``I`` (n_queries, ≥ max(ks))."""
    out = []
    for k in ks:
        out.append(100.0 * np.mean([any(hit(q, int(r)) for r in I[q, :k] if r >= 0) for q in range(len(I))]))
    return out


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--home", required=True)
    p.add_argument("--model", required=True, help="name or name/version")
    p.add_argument("--index", default=None, help="name/version (default: the newest the model's block embedder built)")
    p.add_argument("--questions", required=True)
    p.add_argument("--limit", type=int, default=0, help="first N questions (0: all)")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--bm25-in-memory", action="store_true", help="build the BM25 part here from the block store")
    p.add_argument("--stopwords", default=BM25Config.stopwords, help="with --bm25-in-memory: bm25s stop word list")
    p.add_argument("--k1", type=float, default=BM25Config.k1, help="with --bm25-in-memory")
    p.add_argument("--b", type=float, default=BM25Config.b, help="with --bm25-in-memory")
    p.add_argument("--grid", default="rrf:0.5;normalised_sum:0.5",
                   help="rule:weight,weight;rule:... (weight of the dense list)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--answer", type=int, default=-1, help="EM/F1 on a seeded sample of N questions (0: all; "
                   "-1: none)")
    p.add_argument("--answer-seed", type=int, default=0)
    p.add_argument("--beam", type=int, default=5, help="reader beam")
    p.add_argument("--modes", default="dense,bm25,hybrid")
    p.add_argument("--fusion", default="", help="rule:weight for the hybrid mode (default: the version's)")
    p.add_argument("--unchecked-pair", action="store_true",
                   help="serve the index with a model whose block embedder it was not built by")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    home = Path(a.home)
    name, _, ver = a.model.partition("/")
    v = int(ver) if ver else model_versions(home, name)[-1]
    model = load_model_dir(Home(home).model_dir(name, v), name, v)
    if a.index:
        iname, _, iver = a.index.partition("/")
        found: tuple[str, int] | None = (iname, int(iver))
    else:
        found = find_index(home, model.ref)
    assert found is not None, f"no index for {model.ref}"
    iv = open_index(Home(home), *found, SearchParams())  # as the service opens it (a format 1 manifest's id filled in)
    qs = load_questions(a.questions)
    qs = qs[: a.limit] if a.limit else qs
    texts = iv.blocks._table.column("text").to_pylist()
    t0 = time.perf_counter()
    if a.bm25_in_memory:
        blocks = iv.blocks.get(range(len(iv.blocks)))
        fusion = FusionConfig()
        cfg = BM25Config(stopwords=a.stopwords, k1=a.k1, b=a.b)
        bm25 = BM25Index.build([block_embedding_text(b) for b in blocks], cfg)
        print(f"BM25 part built in memory over {bm25.count} blocks in {time.perf_counter() - t0:.1f} s: {cfg}")
    else:
        from index.hybrid import open_bm25

        part = open_bm25(iv)
        assert part is not None, f"index {iv.ref} has no BM25 part (use --bm25-in-memory)"
        bm25, fusion = part
    t0 = time.perf_counter()
    xq = embed_texts(model.query, [q.question for q in qs]).numpy()
    t1 = time.perf_counter()
    D, I = search(iv.index, xq, a.depth)
    t2 = time.perf_counter()
    S, J = bm25.search([q.question for q in qs], a.depth)
    t3 = time.perf_counter()
    n = len(qs)
    print(f"{n} questions, model {model.ref}, index {iv.ref} ({len(texts)} blocks), depth {a.depth}: "
          f"embed {1e3 * (t1 - t0) / n:.2f} ms/q, dense search {1e3 * (t2 - t1) / n:.2f} ms/q, "
          f"BM25 {1e3 * (t3 - t2) / n:.2f} ms/q")
    cache: dict[tuple[int, int], bool] = {}

    def hit(q: int, r: int) -> bool:
        if (q, r) not in cache:
            cache[q, r] = has_answer(texts[r], qs[q].answers)
        return cache[q, r]

    ks = (1, 5, 20)
    print(f"{'retrieval':<28}" + "".join(f"{'recall@' + str(k):>11}" for k in ks))

    def row(label: str, rows: np.ndarray) -> None:
        print(f"{label:<28}" + "".join(f"{r:>11.2f}" for r in recall(rows, hit, ks)))

    row("dense", I)
    row("bm25", J)
    for part_spec in a.grid.split(";"):
        rule, _, weights = part_spec.partition(":")
        for w in weights.split(","):
            cfg = FusionConfig(rule=rule, weight=float(w), depth=a.depth)
            _, If = fuse(cfg, (D, I), (S, J), max(ks))
            row(f"{rule} w={float(w):.2f}", If)
    if a.fusion:
        rule, _, w = a.fusion.partition(":")
        fusion = FusionConfig(rule=rule, weight=float(w), depth=a.depth)
    if a.answer >= 0:
        answer(a, model, iv, bm25, fusion, qs)


def answer(a: argparse.Namespace, model, iv, bm25: BM25Index, fusion: FusionConfig, qs) -> None:  # type: ignore[no-untyped-def]
    import random

    from realm_core.evaluation import exact_match, f1_score
    from service import engine as engine_mod

    if a.unchecked_pair:
        engine_mod.check_pair = lambda model, index: None  # type: ignore[assignment]
    engine = engine_mod.QAEngine(model, iv)
    sample = list(range(len(qs)))
    if a.answer:
        sample = sorted(random.Random(a.answer_seed).sample(sample, min(a.answer, len(qs))))
    modes = {"dense": None, "bm25": (bm25, FusionConfig(rule="normalised_sum", weight=0.0, depth=a.depth)),
             "hybrid": (bm25, fusion)}
    print(f"EM/F1 on {len(sample)} questions (seed {a.answer_seed}), reader beam {a.beam}, hybrid = {fusion}")
    print(f"{'mode':<10}{'EM':>8}{'F1':>8}{'ms/q':>8}")
    for mode in a.modes.split(","):
        engine._hybrid = modes[mode]
        em = f1 = 0.0
        t0 = time.perf_counter()
        for i in range(0, len(sample), 8):
            batch = [qs[j] for j in sample[i:i + 8]]
            for q, ans in zip(batch, engine.answer([q.question for q in batch], a.beam)):
                em += exact_match(ans.best.answer, q.answers)
                f1 += f1_score(ans.best.answer, q.answers)
        ms = 1e3 * (time.perf_counter() - t0) / len(sample)
        print(f"{mode:<10}{100 * em / len(sample):>8.2f}{100 * f1 / len(sample):>8.2f}{ms:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
