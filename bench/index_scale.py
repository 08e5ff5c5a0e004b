"""Index scale benchmark: N random unit vectors of dim 128, exact ``Flat`` and ``IVF..,PQ..``.

For each kind it prints the build time (training included), the process's peak resident memory so far
(``resource.getrusage``), queries/s at batch 1 and at batch 64, and recall@10 against exact search on the
same held-out random unit queries. Vectors are generated chunk by chunk into a float32 ``.npy`` memory map
in ``--workdir`` and added from there, as the index worker does; the exact answers come from the Flat index.

    python -m bench.index_scale --n 100000                 # a quick check
    python -m bench.index_scale --preset 1m                # IVF16384,PQ32 by default for presets
    python -m bench.index_scale --preset 13m --workdir /big/disk   # REALM's 13.35M blocks

Random unit vectors are the hardest case for IVF-PQ (no cluster structure), so its recall here is a floor.
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from index.faiss_index import new_index, recall_at_k, set_search_params

PRESETS = {"1m": 1_000_000, "13m": 13_350_000}
DIM = 128


def unit_vectors(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_vectors(path: Path, n: int, chunk: int, seed: int) -> np.ndarray:
    """``n`` random unit vectors in a float32 ``.npy`` memory map, written ``chunk`` rows at a time."""
    xb = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    rng = np.random.default_rng(seed)
    for i in range(0, n, chunk):
        xb[i:i + chunk] = unit_vectors(rng, min(chunk, n - i))
    xb.flush()
    return np.load(path, mmap_mode="r")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def build(xb: np.ndarray, factory: str, chunk: int, train_sample: int, seed: int) -> tuple[faiss.Index, float]:
    t0 = time.perf_counter()
    index = new_index(DIM, factory)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(seed).choice(len(xb), size=min(train_sample, len(xb)), replace=False))
        index.train(np.ascontiguousarray(xb[rows]))
    for i in range(0, len(xb), chunk):
        index.add(np.ascontiguousarray(xb[i:i + chunk]))
    return index, time.perf_counter() - t0


def qps(index: faiss.Index, xq: np.ndarray, batch: int, k: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(xq), batch):
        index.search(xq[i:i + batch], k)
    return len(xq) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--n", type=int, help="number of vectors (instead of --preset)")
    p.add_argument("--ivfpq", help="IVF-PQ factory (default IVF16384,PQ32 for presets, else IVF{~4√n},PQ32)")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--train-sample", type=int, help="training vectors (default 40 × nlist, at most n)")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries (batch 64; batch 1 uses 200)")
    p.add_argument("--chunk", type=int, default=1_000_000, help="rows generated and added at a time")
    p.add_argument("--workdir", type=Path, help="where the vectors' .npy goes (default: a temporary dir)")
    p.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss' default)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    n = a.n or PRESETS[a.preset or "1m"]
    if a.threads:
        faiss.omp_set_num_threads(a.threads)
    ivfpq = a.ivfpq or ("IVF16384,PQ32" if a.preset else f"IVF{2 ** round(math.log2(4 * math.sqrt(n)))},PQ32")
    nlist = int(ivfpq.split(",")[0][3:])
    train_sample = a.train_sample or 40 * nlist
    k = 10
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        t0 = time.perf_counter()
        xb = write_vectors(Path(tmp) / "xb.npy", n, a.chunk, a.seed)
        xq = unit_vectors(np.random.default_rng(a.seed + 1), a.queries)
        print(f"n={n} dim={DIM} vectors written in {time.perf_counter() - t0:.1f}s; faiss {faiss.__version__}, "
              f"{faiss.omp_get_max_threads()} threads")
        print(f"{'index':<28} {'build_s':>9} {'peak_rss_GiB':>12} {'qps@1':>9} {'qps@64':>9} {'recall@10':>9}")
        I_exact = None
        for factory in ("Flat", ivfpq):
            index, build_s = build(xb, factory, a.chunk, train_sample, a.seed)
            params = set_search_params(index, nprobe=a.nprobe)
            q1 = qps(index, xq[:200], 1, k)
            q64 = qps(index, xq, 64, k)
            _, I = index.search(xq, k)
            if I_exact is None:
                I_exact = I
            name = factory + (f" ({params})" if params else "")
            print(f"{name:<28} {build_s:>9.1f} {peak_rss_gib():>12.2f} {q1:>9.0f} {q64:>9.0f} "
                  f"{recall_at_k(I, I_exact):>9.3f}")
            del index


if __name__ == "__main__":
    main()
