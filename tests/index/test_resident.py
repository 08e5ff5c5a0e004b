"""index.resident: a mapped index file is brought into memory (every page mapped, or the first ``limit``
bytes); a file faiss read into memory has nothing to warm; the sliced smoke search reads only its rows."""

from __future__ import annotations

import mmap
from pathlib import Path

import faiss
import numpy as np

from index.faiss_index import search, search_first_rows
from index.resident import MADV_RANDOM, mapping_advice, mappings, resident_bytes, warm_file
from index.version import read_mapped

PAGE = mmap.PAGESIZE


def pages(n: int) -> int:
    return -(-n // PAGE) * PAGE


def flat_file(path: Path, n: int = 8192, d: int = 64, seed: int = 0) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    index = faiss.IndexFlatIP(d)
    index.add(x)
    faiss.write_index(index, str(path))
    return path, x


def test_warm_file_maps_every_page_of_a_mapped_index(tmp_path: Path) -> None:
    path, x = flat_file(tmp_path / "index.faiss")  # 2 MiB of codes
    index = read_mapped(path)
    size = path.stat().st_size
    assert len(mappings(path)) >= 1
    assert resident_bytes(path) < size // 2  # opening reads (nearly) nothing
    w = warm_file(path)
    assert (w.method, w.size, w.warmed, w.complete) == ("populate", size, size, True)
    assert resident_bytes(path) == pages(size)  # every page is in memory and mapped: no search faults
    assert [mapping_advice(start) for start, _, _ in mappings(path)] == [MADV_RANDOM]  # faiss' advice, restored
    D, I = search(index, x[:3], 1)
    assert I[:, 0].tolist() == [int(np.argmax(x @ q)) for q in x[:3]]


def test_warm_file_stops_at_the_limit(tmp_path: Path) -> None:
    path, _ = flat_file(tmp_path / "index.faiss")
    index = read_mapped(path)
    size = path.stat().st_size
    w = warm_file(path, size // 2)
    assert (w.warmed, w.complete) == (size // 2, False)
    assert size // 2 <= resident_bytes(path) < size  # the rest stays on disk (the kernel may map a few more pages)
    assert index.ntotal == 8192


def test_a_file_that_is_not_mapped_has_nothing_to_warm(tmp_path: Path) -> None:
    path, _ = flat_file(tmp_path / "index.faiss")
    index = faiss.read_index(str(path))  # read into memory, as faiss does for a kind it cannot map
    w = warm_file(path)
    assert (w.method, w.warmed, mappings(path)) == ("none", 0, [])
    assert index.ntotal == 8192


def test_search_first_rows_reads_only_those_rows(tmp_path: Path) -> None:
    path, x = flat_file(tmp_path / "index.faiss", n=20000)
    q = 3 * x[15000:15001]  # its best row overall is 15000, past the slice
    index = read_mapped(path)
    D, I = search_first_rows(index, q, 2, 4096)
    assert 0 <= I.min() and I.max() < 4096
    assert I[0].tolist() == np.argsort(-(x[:4096] @ q[0]))[:2].tolist()
    assert resident_bytes(path) < path.stat().st_size // 2  # rows past the slice were not read
    assert search(index, q, 1)[1][0, 0] == 15000
    ivf = faiss.index_factory(64, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)  # other kinds: the full search
    ivf.train(x)
    ivf.add(x)
    assert search_first_rows(ivf, q, 1, 4096)[1].tolist() == search(ivf, q, 1)[1].tolist()
