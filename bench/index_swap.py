"""Index swap at REALM's size: open and activate a Flat version of N random unit 128-d vectors, and the peak
resident memory of the serving process during the swap, against one index.

Builds (once, kept in ``--workdir``) a home with a tiny random model whose block embedder outputs 128 dims and
two published versions ``big/1`` and ``big/2`` of a Flat index (``index.version.publish``: hashed once) over N
random unit vectors each, with a block store of N short blocks. Then, in a fresh process, the service's
registry starts on ``big/1`` (pinned), a retrieval touches every page of it (so one index is resident), and
``Registry.activate_index("big", 2)`` is timed: open (sizes, manifest checksum, memory map), validate, the
engine's smoke search over the whole new index, swap, pin. ``--cold`` first asks the kernel to drop ``big/2``'s
pages from the page cache (``posix_fadvise(DONTNEED)`` on its files only), so the open reads from disk.

    python -m bench.index_swap --n 13350000 --workdir /work/runs/i11/swap --threads 2
    python -m bench.index_swap --n 200000 --workdir /tmp/swap          # a quick check

Figures: ``open_at_start_s`` (the registry's start on big/1), ``activate_s`` (open + validate + smoke search +
swap of big/2), ``peak_rss_gib`` (the process's VmHWM), ``index_gib`` (one index file), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 128


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def write_model(root: Path) -> None:
    """tests.service.tiny_home's random model with REALM pooling: a 128-dim block (and query) embedder."""
    import dataclasses

    from safetensors.torch import save_file

    from realm_core.embedder import Embedder, EmbedderConfig
    from tests.service.tiny_home import _bert
    from tests.service.tiny_home import write_model as write_tiny

    write_tiny(root)
    cfg = EmbedderConfig(_bert(), pooling="realm", proj_size=DIM, normalize=False, max_tokens=64)
    (root / "embedder_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    save_file({k: v.contiguous() for k, v in Embedder(cfg).state_dict().items()}, root / "embedder.safetensors")


def build_version(home_root: Path, n: int, seed: int, chunk: int = 1_000_000) -> None:
    import faiss
    import pyarrow as pa

    from index.block_store import SCHEMA, BlockStoreWriter
    from index.home import Home
    from index.version import publish, version_files

    home = Home(home_root)
    model = home.model_version("tiny/1")
    scratch = home.new_scratch("big", "staging")
    files = version_files(scratch.path)
    t0 = time.perf_counter()
    try:
        index = faiss.IndexFlatIP(DIM)
        rng = np.random.default_rng(seed)
        with BlockStoreWriter(files.blocks) as store:
            for i in range(0, n, chunk):
                m = min(chunk, n - i)
                x = rng.standard_normal((m, DIM), dtype=np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                index.add(x)
                ids = pa.array([f"{seed}-{j}" for j in range(i, i + m)])
                store.add_table(pa.table({"id": ids, "title": pa.array([""] * m), "text": ids}, schema=SCHEMA))
        faiss.write_index(index, str(files.faiss_index))
        del index
        t1 = time.perf_counter()
        m = publish(scratch.path, dict(name="big", embedder=model.ref, embedder_id=model.embedder_id, dim=DIM, count=n,
                                       metric="inner_product", factory="Flat", block_max_tokens=64,
                                       corpus=f"random unit vectors, seed {seed}"))
    finally:
        scratch.release()
    print(f"built big/{m.version}: {n} vectors in {t1 - t0:.1f}s, published (sha256 of every file) in "
          f"{time.perf_counter() - t1:.1f}s", flush=True)


def measure(home_root: Path, threads: int, cold: bool) -> None:
    import faiss
    import torch

    from index.home import Home
    from index.pins import set_pins
    from index.version import version_files
    from service.registry import Registry

    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    home = Home(home_root)
    set_pins(home, {"tiny/1": "big/1"})
    t0 = time.perf_counter()
    registry = Registry.from_home(home.root, build_missing=False)
    open_s = time.perf_counter() - t0
    engine = registry.get(None)
    t0 = time.perf_counter()
    engine.retrieve(["alpha bravo"], 5)  # a full scan: every page of big/1 resident
    scan_s = time.perf_counter() - t0
    index_bytes = version_files(home.index_dir("big", 2)).faiss_index.stat().st_size
    rss_one = status_kib("VmRSS") * 1024
    if cold:
        for f in version_files(home.index_dir("big", 2)).root.iterdir():
            with open(f, "rb") as fh:
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    t0 = time.perf_counter()
    registry.activate_index("big", 2)
    activate_s = time.perf_counter() - t0
    served = engine.retrieve(["alpha bravo"], 1)[0].index_ref
    hwm = status_kib("VmHWM") * 1024
    after = status_kib("VmRSS") * 1024
    gib = 2**30
    print(json.dumps({"n": engine.block_count, "threads": threads, "cold": cold, "open_at_start_s": round(open_s, 2),
                      "first_scan_s": round(scan_s, 2), "activate_s": round(activate_s, 2), "served": served,
                      "index_gib": round(index_bytes / gib, 2), "rss_one_index_gib": round(rss_one / gib, 2),
                      "peak_rss_gib": round(hwm / gib, 2), "peak_over_index": round(hwm / index_bytes, 2),
                      "rss_after_gib": round(after / gib, 2)}), flush=True)
    set_pins(home, {"tiny/1": "big/1"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=13_350_000, help="vectors per version (REALM: 13.35M)")
    p.add_argument("--workdir", type=Path, required=True, help="where the home goes (about 2 × n × 540 bytes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cold", action="store_true", help="drop big/2's pages from the page cache before activating")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the measuring child process
    a = p.parse_args()
    home = a.workdir / "home"
    if a.measure:
        measure(home, a.threads, a.cold)
        return
    from index.home import Home

    if not Home(home).model_dir("tiny", 1).is_dir():
        write_model(Home(home).model_dir("tiny", 1))
    have = Home(home).index_versions("big")
    if have and have != [1, 2]:
        raise SystemExit(f"{home}: versions {have} of big; remove the workdir to rebuild")
    for seed in (1, 2)[len(have):]:
        build_version(home, a.n, seed)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    cmd = [sys.executable, "-m", "bench.index_swap", "--measure", "--workdir", str(a.workdir), "--threads",
           str(a.threads)] + (["--cold"] if a.cold else [])
    subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
    main()
