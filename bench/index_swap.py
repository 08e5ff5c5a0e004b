"""Index swap at REALM's size: open and activate a Flat version of N random unit 128-d vectors, and the peak
resident memory of the serving process during the swap, against one index.

Builds (once, kept in ``--workdir``) a home with a tiny random model whose block embedder outputs 128 dims and
two published versions ``big/1`` and ``big/2`` of a Flat index (``index.version.publish``: hashed once) over N
random unit vectors each, with a block store of N short blocks. Then, in a fresh process, the service's
registry starts on ``big/1`` (pinned; the engine warms it), a retrieval scans all of it, and
``Registry.activate_index("big", 2)`` is timed: open (sizes, manifest checksum, memory map), validate, warm (the
file read ahead and mapped, ``index.resident``), the engine's smoke search over the first 4,096 rows, swap, pin.
Before it, ``big/2``'s files are read through the page cache (as just after a build), or with ``--cold`` dropped
from it (``posix_fadvise(DONTNEED)`` on its files only), so that the warm-up reads from disk. Then the first two
requests on ``big/2`` (full scans) are timed: the first must not pay for the disk.

    python -m bench.index_swap --n 13350000 --workdir /work/runs/i11/swap --threads 2 [--cold]
    python -m bench.index_swap --n 200000 --workdir /tmp/swap          # a quick check

Figures: ``open_at_start_s`` (the registry's start on big/1, its warm-up included), ``open_s`` (opening big/2),
``warm_s``/``warm_method``/``warmed_gib``, ``activate_s`` (open + validate + warm + smoke search + swap + pin of
big/2), ``first_request_after_s`` and ``second_request_s``, ``peak_rss_gib`` (the process's VmHWM), ``index_gib``
(one index file), and their ratio ``peak_over_index``.
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

    import service.registry as registry_module
    from index.home import Home
    from index.pins import pin_key, set_pins
    from index.resident import read_through
    from index.version import version_files
    from service.registry import Registry

    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    home = Home(home_root)
    pin = {pin_key("tiny/1", home.model_version("tiny/1").embedder_id): "big/1"}
    set_pins(home, pin)
    t0 = time.perf_counter()
    registry = Registry.from_home(home.root, build_missing=False)  # opens and warms big/1
    open_s = time.perf_counter() - t0
    engine = registry.get(None)
    t0 = time.perf_counter()
    engine.retrieve(["alpha bravo"], 5)  # a full scan: every page of big/1 resident
    scan_s = time.perf_counter() - t0
    new = version_files(home.index_dir("big", 2))
    index_bytes = new.faiss_index.stat().st_size
    rss_one = status_kib("VmRSS") * 1024
    for f in new.root.iterdir():
        if cold:  # only big/2's files leave the page cache
            with open(f, "rb") as fh:
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        else:  # as after a build on this machine: big/2 in the page cache, not yet mapped by the service
            read_through(f, f.stat().st_size)
    opened: list[float] = []
    real_open = registry_module.open_index

    def timed_open(*args: object, **kw: object) -> object:
        t = time.perf_counter()
        try:
            return real_open(*args, **kw)  # type: ignore[arg-type]
        finally:
            opened.append(time.perf_counter() - t)

    registry_module.open_index = timed_open  # type: ignore[assignment]
    t0 = time.perf_counter()
    registry.activate_index("big", 2)
    activate_s = time.perf_counter() - t0
    w = engine.last_warmup
    hwm = status_kib("VmHWM") * 1024
    t0 = time.perf_counter()
    served = engine.retrieve(["alpha bravo"], 1)[0].index_ref  # the first request on big/2: a full scan
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.retrieve(["charlie delta"], 1)
    second_s = time.perf_counter() - t0
    after = status_kib("VmRSS") * 1024
    gib = 2**30
    print(json.dumps({"n": engine.block_count, "threads": threads, "cold": cold, "open_at_start_s": round(open_s, 2),
                      "first_scan_s": round(scan_s, 2), "open_s": round(opened[0], 2),
                      "warm_s": round(w.seconds, 2) if w else None, "warm_method": w.method if w else None,
                      "warmed_gib": round(w.warmed / gib, 2) if w else None,
                      "activate_s": round(activate_s, 2), "served": served,
                      "first_request_after_s": round(first_s, 2), "second_request_s": round(second_s, 2),
                      "index_gib": round(index_bytes / gib, 2), "rss_one_index_gib": round(rss_one / gib, 2),
                      "peak_rss_gib": round(hwm / gib, 2), "peak_over_index": round(hwm / index_bytes, 2),
                      "rss_after_gib": round(after / gib, 2)}), flush=True)
    set_pins(home, pin)


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
