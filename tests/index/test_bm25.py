"""The BM25 part (index.bm25): scores against Okapi BM25 worked out here, analysis, save/open round trip."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from index.bm25 import BM25Config, BM25Error, BM25Index
from tests.conftest import BUNDLED_CORPUS

DOCS = [
    "the cat sat on the mat",
    "dogs chase cats and cats chase mice",
    "a mat of grass under the old oak",
    "quantum chromodynamics describes quarks and gluons",
]


def reference_bm25(docs: list[str], query: str, k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """Okapi BM25, Lucene's variant (Kamphuis et al., ECIR 2020): idf = log(1 + (N - df + 0.5) / (df + 0.5)),
    term part tf / (tf + k1 (1 - b + b dl / avgdl)); terms as bm25s splits them, no stop words or stems."""
    terms = [re.findall(r"\b\w\w+\b", d.lower()) for d in docs]
    avgdl = sum(map(len, terms)) / len(terms)
    n = len(docs)
    out = np.zeros(n)
    for t in set(re.findall(r"\b\w\w+\b", query.lower())):
        df = sum(t in d for d in terms)
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(terms):
            tf = Counter(d)[t]
            out[i] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
    return out


def test_scores_are_okapi_bm25() -> None:
    part = BM25Index.build(DOCS, BM25Config(stopwords=None, stemmer=None))
    for query in ("cats chase the mat", "mat", "quarks and gluons oak"):
        S, I = part.search([query], k=4)
        ref = reference_bm25(DOCS, query)
        hits = I[0] >= 0
        np.testing.assert_allclose(S[0][hits], ref[I[0][hits]], rtol=1e-5)
        assert sorted(I[0][hits].tolist()) == sorted(np.flatnonzero(ref > 0).tolist())
        assert (np.diff(S[0][hits]) <= 0).all()  # best first


def test_analysis_stems_and_drops_stop_words() -> None:
    part = BM25Index.build(DOCS)
    assert part.query_terms(["The cats were chasing"]) == [["cat", "chase"]]
    S, I = part.search(["chasing"], k=3)
    assert I[0].tolist() == [1, -1, -1] and S[0, 1] == 0


def test_a_query_sharing_no_term_finds_nothing() -> None:
    part = BM25Index.build(DOCS)
    S, I = part.search(["zebra", "?"], k=2)
    assert (I == -1).all() and (S == 0).all()
    with pytest.raises(ValueError, match="k must be"):
        part.search(["cat"], k=0)


def test_save_open_round_trip(tmp_path: Path) -> None:
    """The part read back from its files (memory-mapped) answers exactly as the one built in memory."""
    with gzip.open(BUNDLED_CORPUS, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in itertools.islice(f, 300)]
    texts = [f"{d['title']}. {d['text']}" for d in docs]
    built = BM25Index.build(texts)
    files = built.save(tmp_path / "bm25")
    assert {p.name for p in files} >= {"realmqa-bm25.json", "params.index.json", "vocab.index.json"}
    opened = BM25Index.open(tmp_path / "bm25", count=len(texts))
    assert opened.config == built.config
    queries = [d["text"].split(".")[0] for d in docs[::37]] + ["What is the Grotto at Notre Dame?"]
    S1, I1 = built.search(queries, k=10)
    S2, I2 = opened.search(queries, k=10)
    assert (I1 == I2).all()
    np.testing.assert_array_equal(S1, S2)
    assert (I1[:, 0] >= 0).all()


def test_open_refuses_a_damaged_or_foreign_part(tmp_path: Path) -> None:
    BM25Index.build(DOCS).save(tmp_path / "bm25")
    with pytest.raises(BM25Error, match="has 4 blocks, the version has 5"):
        BM25Index.open(tmp_path / "bm25", count=5)
    (tmp_path / "bm25" / "realmqa-bm25.json").unlink()
    with pytest.raises(BM25Error, match="missing"):
        BM25Index.open(tmp_path / "bm25")
