"""Bringing a memory-mapped index file into memory before it serves (Linux; elsewhere nothing is warmed).

:func:`index.version.read_mapped` maps a FAISS file: opening reads nothing, and each page is read from disk the
first time a search touches it. At REALM's size (13.35M × 128 float32 = 6.4 GB for Flat) the first exhaustive
search after an open then pays the whole file through page faults, about 100 MB/s on a shared disk. :func:`warm_file`
reads the file ahead into the page cache and fills this process's page tables for every mapping of it
(``madvise(MADV_POPULATE_READ)``, Linux ≥ 5.14, in chunks of :data:`CHUNK_BYTES`), so that no request pays for the
disk read; on an older kernel it reads the file through the page cache in chunks instead, and requests pay only
minor faults. ``bench/page_warm.py`` measured the methods on this machine (see ``bench/README.md``).

Memory: warming a new version while the old one serves needs room for both. :func:`warm_file` brings in at most
``budget`` bytes; the caller passes what the kernel reports as available (``MemAvailable``) less what the
serving version keeps resident (:func:`warm_budget`). When RAM cannot hold both, the first ``budget`` bytes are
warmed, the rest is read from disk by the first searches after the swap, and the shortfall is logged: warming
further would only evict the pages the serving version is using.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 20  # per madvise or read call: a 6.4 GB file is 100 calls
MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL = 0, 1, 2  # linux/mman.h
MADV_POPULATE_READ = 22  # linux/mman.h (5.14): fault pages in for reading, without copying them anywhere

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


@dataclass(frozen=True)
class Warmup:
    """What :func:`warm_file` did: ``size`` bytes of file, ``warmed`` of them brought in, in ``seconds``;
    ``method`` "populate" (page cache and page tables), "read" (page cache only), or "none" (the file is not
    mapped by this process: faiss read it into memory when it opened it, or there is no ``/proc/self/maps``)."""

    size: int
    warmed: int
    seconds: float
    method: str

    @property
    def complete(self) -> bool:
        return self.warmed >= self.size


def mappings(path: str | Path) -> list[tuple[int, int, int]]:
    """(start address, end address, file offset) of every mapped range of the file ``path`` in this process ([]
    where there is no ``/proc/self/maps``). One mapping may show as several ranges (after ``madvise``)."""
    target = str(Path(path).resolve())
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].rstrip("\n") == target:
                    start, end = (int(a, 16) for a in parts[0].split("-"))
                    out.append((start, end, int(parts[2], 16)))
    except OSError:
        return []
    return out


def resident_bytes(path: str | Path) -> int:
    """Bytes of ``path``'s mappings in this process that are in memory and mapped (the ``Rss`` of
    ``/proc/self/smaps``; 0 where there is none)."""
    target, total, inside = str(Path(path).resolve()), 0, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):  # a mapping's first line: "start-end perms ... path"
                    parts = line.split(maxsplit=5)
                    inside = len(parts) == 6 and parts[5].rstrip("\n") == target
                elif inside and head == "Rss:":
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


def mem_available() -> int | None:
    """The kernel's estimate of memory available without swapping (``MemAvailable``, bytes), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def warm_index_file(path: str | Path, serving_bytes: int) -> Warmup:
    """:func:`warm_file` within the memory left beside a serving version of ``serving_bytes`` (its index
    file): when RAM cannot hold both, only the first part is warmed and the shortfall is logged."""
    size = Path(path).stat().st_size
    avail = mem_available()
    budget = None if avail is None else max(0, avail - serving_bytes)
    if budget is not None and budget < size:
        log.warning("%s: RAM cannot hold it beside the version serving (%.2f GiB available beside it, %.2f GiB "
                    "needed): %.2f GiB will be read from disk by the first searches after the swap", path,
                    budget / 2**30, size / 2**30, (size - budget) / 2**30)
    return warm_file(path, budget)


def warm_file(path: str | Path, limit: int | None = None, fill: str = "sequential") -> Warmup:
    """Bring the first ``limit`` bytes (all when None) of the file ``path`` into memory through every mapping of
    it in this process, in order, in chunks of :data:`CHUNK_BYTES` (``madvise(MADV_POPULATE_READ)``: read from
    disk and mapped, nothing copied). faiss maps its files ``MADV_RANDOM``, under which each fault reads one
    page (62 MB/s here); ``fill`` "sequential" (the default, fastest here: 2.4 GB/s) advises the range
    ``MADV_SEQUENTIAL`` while it is brought in, so the kernel reads ahead, and restores the mapping's advice
    after; "read" first reads each chunk with one large ``read`` (a copy; 0.7 GB/s); "none" leaves the advice
    alone. Blocks until done.

    Raises:
        OSError: the file cannot be read.
    """
    t0 = time.perf_counter()
    ranges = mappings(path)
    size = Path(path).stat().st_size
    if not ranges:
        return Warmup(size, 0, 0.0, "none")
    limit = size if limit is None else min(size, limit)
    warmed = 0
    with open(path, "rb", buffering=0) as f:
        buf = memoryview(bytearray(CHUNK_BYTES)) if fill == "read" else None
        for start, end, offset in ranges:
            advice = mapping_advice(start)
            for off in range(offset, min(offset + end - start, limit), CHUNK_BYTES):
                n = min(CHUNK_BYTES, limit - off, offset + end - start - off)
                address = start + off - offset
                if buf is not None:
                    f.seek(off)
                    f.readinto(buf[:n])
                elif fill == "sequential":
                    _libc.madvise(address, n, MADV_SEQUENTIAL)
                while (err := _populate(address, n)) == errno.EINTR:
                    pass
                if fill == "sequential":
                    _libc.madvise(address, n, advice)
                if err in (errno.EINVAL, errno.ENOSYS):  # kernel < 5.14: the page cache only
                    return Warmup(size, read_through(path, limit), time.perf_counter() - t0, "read")
                if err == errno.ENOMEM:  # the range was unmapped meanwhile (its index closed)
                    break
                if err:
                    raise OSError(err, f"madvise(MADV_POPULATE_READ) on {path}: {os.strerror(err)}")
                warmed += n
    return Warmup(size, min(warmed, limit), time.perf_counter() - t0, "populate")


def mapping_advice(start: int) -> int:
    """The access advice of the mapping that begins at ``start`` (``VmFlags`` of ``/proc/self/smaps``)."""
    inside = False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    inside = int(head.split("-")[0], 16) == start
                elif inside and head == "VmFlags:":
                    flags = line.split()[1:]
                    return MADV_RANDOM if "rr" in flags else MADV_SEQUENTIAL if "sr" in flags else MADV_NORMAL
    except OSError:
        pass
    return MADV_NORMAL


def _populate(address: int, n: int) -> int:
    """``madvise(MADV_POPULATE_READ)`` over ``n`` bytes at ``address``; 0 or the errno."""
    return 0 if _libc.madvise(address, n, MADV_POPULATE_READ) == 0 else ctypes.get_errno()


def read_through(path: str | Path, limit: int) -> int:
    """Read the first ``limit`` bytes of ``path`` into the page cache (one reused buffer); returns bytes read."""
    buf = bytearray(CHUNK_BYTES)
    view, done = memoryview(buf), 0
    with open(path, "rb", buffering=0) as f:
        while done < limit:
            n = f.readinto(view[:min(CHUNK_BYTES, limit - done)])
            if not n:
                break
            done += n
    return done
