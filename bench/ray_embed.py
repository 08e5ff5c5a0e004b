"""Block embeddings per second: in this process (the local executor) against Ray (``index/ray_embed.py``).

The first ``--docs`` documents of the bundled corpus are split into blocks with the bundled model's block
embedder (MiniLM-L6) once, cut into chunks of ``--chunk-blocks``, then embedded ``--rounds`` times by each
executor, alternating, so that both see the same load on a shared machine:

- local: :func:`realm_core.model_dir.embed_texts` chunk by chunk, torch with ``--threads`` threads;
- ray: :class:`index.ray_embed.RayExecutor` on a local Ray with ``--actors`` CPUs, one actor (one torch
  thread) per CPU. Each round times ``ray.init``, a run of the first chunk alone (actors start, load the
  embedder, embed one chunk) and a run of all chunks: ``blocks/s`` = (blocks - first chunk) / (all - one),
  the rate once running; ``start-up s`` = init + the fixed cost of a run; ``total blocks/s`` = blocks /
  (init + the run of all chunks), what a build of this size sees.

    python -m bench.ray_embed --docs 400 --chunk-blocks 32 --rounds 2

Prints the load average (``os.getloadavg``) before and after: on a shared machine the figures move with it.
Needs the ray extra (pip install 'realmqa[ray]').
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from index.chunks import block_embedding_text
from index.corpus import read_corpus, split_blocks
from index.home import Home
from index.ray_embed import RayExecutor, RayOptions
from realm_core.model_dir import embed_texts, load_model_dir
from service.settings import BUNDLED_HOME

MODEL = Home(BUNDLED_HOME).model_dir("minilm-squad", 1)
CORPUS = BUNDLED_HOME / "corpus" / "squad-v1.1-paragraphs.jsonl.gz"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=400, help="documents of the bundled corpus")
    p.add_argument("--chunk-blocks", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the local executor")
    p.add_argument("--actors", type=int, default=2, help="Ray embedder actors (= CPUs of the local Ray)")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    print(f"load average before: {load()}")
    model = load_model_dir(MODEL, "minilm-squad", 1)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
            corpus.write_text("".join(itertools.islice(f, a.docs)))
        t = time.perf_counter()
        blocks = list(split_blocks(read_corpus(corpus), model.block.tokenizer, model.block_max_tokens))
        split_s = time.perf_counter() - t
    texts = [block_embedding_text(b) for b in blocks]
    chunks = [(i, texts[s:s + a.chunk_blocks]) for i, s in enumerate(range(0, len(texts), a.chunk_blocks))]
    n = len(texts)
    print(f"{a.docs} documents -> {n} blocks in {len(chunks)} chunks of {a.chunk_blocks}; "
          f"splitting: {n / split_s:.0f} blocks/s ({split_s:.1f} s)")
    print(json.dumps({"threads": a.threads, "actors": a.actors, "batch_size": a.batch_size}))
    print(f"{'round':>5} {'executor':>8} {'blocks/s':>9} {'start-up s':>10} {'total blocks/s':>14}")
    for r in range(1, a.rounds + 1):
        t = time.perf_counter()
        for _, c in chunks:
            embed_texts(model.block, c, a.batch_size)
        rate = n / (time.perf_counter() - t)
        print(f"{r:>5} {'local':>8} {rate:>9.1f} {0.0:>10.1f} {rate:>14.1f}", flush=True)

        ex = RayExecutor(options=RayOptions(address="local", actors=a.actors, local_cpus=a.actors))
        t = time.perf_counter()
        ex.connect()
        init_s = time.perf_counter() - t
        t = time.perf_counter()
        # the fixed cost of a run: actors start, load the embedder, embed one chunk
        list(ex.embed_chunks(model.block, a.batch_size, chunks[:1]))
        one_s = time.perf_counter() - t
        t = time.perf_counter()
        list(ex.embed_chunks(model.block, a.batch_size, chunks))
        all_s = time.perf_counter() - t
        ex.close()
        steady = (n - len(chunks[0][1])) / max(all_s - one_s, 1e-9)
        startup = init_s + one_s - len(chunks[0][1]) / steady
        print(f"{r:>5} {'ray':>8} {steady:>9.1f} {startup:>10.1f} {n / (init_s + all_s):>14.1f}", flush=True)
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
