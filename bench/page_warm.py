"""Which way of bringing a cold memory-mapped file into memory is fastest here (``index.resident``).

For each method the file's pages are first dropped from the page cache (``posix_fadvise(DONTNEED)``: works only
while no process maps the file; the cached share before each method is printed from ``mincore``), then the
first ``--gib`` of the file is mapped by this process and brought in:

- ``fault``: one byte read per 4 KiB page through the mapping, in order (a normal mapping);
- ``populate``: ``madvise(MADV_POPULATE_READ)`` in 64 MiB chunks (:func:`index.resident.warm_file`, ``fill="none"``);
- ``random+populate``: the same on a mapping advised ``MADV_RANDOM``, as faiss maps its files;
- ``random+read+populate``: each chunk ``read`` into one buffer first (``fill="read"``);
- ``random+sequential+populate``: each chunk advised ``MADV_SEQUENTIAL``, populated, and advised as before
  (``fill="sequential"``, the default).
(``posix_fadvise(WILLNEED)`` is no method: Linux caps it at the read-ahead window, 4 MiB here.)

    python -m bench.page_warm --file /work/runs/i11/swap/home/indexes/big/2/index.faiss --gib 2

Prints one JSON line per method: seconds, MB/s, and the share of the range cached before and mapped after.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import time
from pathlib import Path

import numpy as np

from index.resident import resident_bytes, warm_file

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def cached_share(m: mmap.mmap, n: int) -> float:
    """Share of the first ``n`` bytes of the mapping that are in the page cache (``mincore``)."""
    vec = (ctypes.c_ubyte * ((n + PAGE - 1) // PAGE))()
    view = np.frombuffer(m, dtype=np.uint8, count=n)
    addr = view.ctypes.data
    del view  # the mapping must have no exported buffer when it is closed
    if libc.mincore(addr, n, vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return float(np.frombuffer(vec, dtype=np.uint8).astype(bool).mean())


def drop(path: Path) -> None:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def run(path: Path, n: int, method: str) -> dict[str, object]:
    drop(path)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:
        before = cached_share(m, n)
        t0 = time.perf_counter()
        if method.startswith("random"):
            m.madvise(mmap.MADV_RANDOM)
        if method == "fault":
            a = np.frombuffer(m, dtype=np.uint8, count=n)
            int(a[::PAGE].sum())
            del a
        elif method in ("populate", "random+populate"):
            warm_file(path, n, fill="none")
        elif method == "random+read+populate":
            warm_file(path, n, fill="read")
        elif method == "random+sequential+populate":
            warm_file(path, n, fill="sequential")
        else:
            raise SystemExit(f"unknown method {method}")
        s = time.perf_counter() - t0
        mapped = resident_bytes(path) / n
        return {"method": method, "gib": round(n / 2**30, 2), "s": round(s, 2), "mb_per_s": round(n / s / 1e6),
                "cached_before": round(before, 3), "mapped_after": round(mapped, 3)}
    finally:
        m.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--gib", type=float, default=2.0, help="how much of the file each method brings in")
    p.add_argument("--methods", default="random+read+populate,random+sequential+populate,populate,fault",
                   help="also random+populate: page by page, run it on a small --gib")
    a = p.parse_args()
    n = min(int(a.gib * 2**30), a.file.stat().st_size) // PAGE * PAGE
    for method in a.methods.split(","):
        print(json.dumps(run(a.file, n, method)), flush=True)


if __name__ == "__main__":
    main()
