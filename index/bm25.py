"""The BM25 part of an index version: a sparse lexical index of the same blocks, built with ``bm25s``.

A hybrid index version (see :mod:`index.hybrid`) carries, beside its FAISS index and block store, a
``bm25/`` directory: what :meth:`bm25s.BM25.save` writes (the Okapi BM25 score matrix in CSC form as
``.npy`` arrays, the vocabulary, the parameters) plus ``realmqa-bm25.json`` with the text analysis
(stop words, stemmer) that queries must share with the blocks. Row ``r`` of the BM25 part is row ``r``
of the block store and of the FAISS index. The text of a block is what the block embedder reads
(title, then text: :func:`index.chunks.block_embedding_text`). :class:`BM25PartBuilder` is the build
pipeline's part builder (``index.pipeline.PART_BUILDERS["bm25"]``).

Scores are Okapi BM25 with bm25s' ``lucene`` variant (Robertson et al. 1994; Lucene's IDF
``log(1 + (N - df + 0.5) / (df + 0.5))``), ``k1`` = 1.2 and ``b`` = 0.75 (Lucene's defaults). Searches
return faiss-style arrays: ``S`` (n_queries, k) float32 scores and ``I`` (n_queries, k) int64 rows, best
first, with ``I = -1`` (and ``S = 0``) where fewer than ``k`` blocks share a term with the query.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index.block_store import BlockStore
from index.chunks import block_embedding_text

if TYPE_CHECKING:
    import bm25s

log = logging.getLogger(__name__)

PART = "bm25"  # the part's directory in a version and its key in the manifest's ``parts``
ANALYSIS_FILE = "realmqa-bm25.json"


class BM25Error(ValueError):
    """A BM25 part that is missing, malformed or does not match its version; the message says what."""


@dataclass(frozen=True)
class BM25Config:
    """How blocks and queries are turned into terms, and the BM25 parameters."""

    stopwords: str | None = "en_plus"  # bm25s' 179 English stop words (NLTK's list); None: keep every word
    stemmer: str | None = "english"  # a PyStemmer (Snowball) algorithm; None: no stemming
    k1: float = 1.2  # term-frequency saturation (Lucene's default; bm25s' 1.5 did worse on the choice set)
    b: float = 0.75  # length normalisation (bm25s' default)
    method: str = "lucene"  # bm25s scoring variant


def _stemmer(name: str | None):  # -> a callable word -> stem, or None
    if name is None:
        return None
    import Stemmer  # PyStemmer

    return Stemmer.Stemmer(name)


class BM25Index:
    """A ``bm25s`` retriever over the blocks of one index version and the analysis it was built with."""

    def __init__(self, retriever: bm25s.BM25, config: BM25Config) -> None:
        self.retriever, self.config = retriever, config
        self._stem = _stemmer(config.stemmer)

    @property
    def count(self) -> int:
        """Blocks indexed (rows)."""
        return int(self.retriever.scores["num_docs"])

    @classmethod
    def build(cls, texts: Sequence[str], config: BM25Config | None = None) -> BM25Index:
        """Index ``texts`` (one per block, in row order).

        Raises:
            BM25Error: no texts.
        """
        import bm25s  # imported when used: the build pipeline registers this part without paying for it

        if not texts:
            raise BM25Error("a BM25 part needs at least one block")
        config = config or BM25Config()
        tokens = bm25s.tokenize(list(texts), stopwords=config.stopwords, stemmer=_stemmer(config.stemmer),
                                show_progress=False)
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, config)

    def save(self, directory: str | Path) -> list[Path]:
        """Write the part into ``directory`` (created; it should be inside a staging version). Returns the
        files written, for checksums; the caller fsyncs and publishes them with the version."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(directory), show_progress=False)
        (directory / ANALYSIS_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        return sorted(p for p in directory.iterdir() if p.is_file())

    @classmethod
    def open(cls, directory: str | Path, count: int | None = None) -> BM25Index:
        """Open a saved part with its score arrays memory-mapped.

        Raises:
            BM25Error: a file is missing or malformed, or ``count`` is given and differs from the part's rows.
        """
        import bm25s

        directory = Path(directory)
        try:
            config = BM25Config(**json.loads((directory / ANALYSIS_FILE).read_text()))
            retriever = bm25s.BM25.load(str(directory), mmap=True, show_progress=False)
        except FileNotFoundError as e:
            raise BM25Error(f"BM25 part {directory}: {e.filename} is missing") from None
        except (ValueError, TypeError, OSError) as e:
            raise BM25Error(f"BM25 part {directory} cannot be read: {e}") from None
        part = cls(retriever, config)
        if count is not None and part.count != count:
            raise BM25Error(f"BM25 part {directory} has {part.count} blocks, the version has {count}")
        return part

    def query_terms(self, queries: Sequence[str]) -> list[list[str]]:
        """Each query's terms after the blocks' analysis (lower case, stop words out, stemmed)."""
        import bm25s

        out = bm25s.tokenize(list(queries), stopwords=self.config.stopwords, stemmer=self._stem,
                             return_ids=False, show_progress=False)
        return [list(t) for t in out]  # type: ignore[union-attr]

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` blocks of each query by BM25 score.

        Returns:
            ``S`` (n_queries, k) float32 and ``I`` (n_queries, k) int64, best first; ``I = -1`` and
            ``S = 0`` past the blocks that share a term with the query.
        Raises:
            ValueError: ``k`` < 1.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        n = len(queries)
        S = np.zeros((n, k), dtype=np.float32)
        I = np.full((n, k), -1, dtype=np.int64)
        kk = min(k, self.count)
        for qi, terms in enumerate(self.query_terms(queries)):
            ids = self.retriever.get_tokens_ids(terms)
            if not ids:
                continue
            scores = self.retriever.get_scores_from_ids(ids)  # (count,) BM25 score of every block
            top = np.argpartition(-scores, kk - 1)[:kk] if kk < len(scores) else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            top = top[scores[top] > 0]
            S[qi, :len(top)] = scores[top]
            I[qi, :len(top)] = top
        return S, I


class BM25PartBuilder:
    """The build pipeline's BM25 part (``index.pipeline.PartBuilder``): indexes the staged version's blocks
    (title + text) into ``out/bm25`` and returns the manifest's ``parts["bm25"]`` record."""

    def __init__(self, config: BM25Config | None = None) -> None:
        self.config = config or BM25Config()

    def build(self, blocks: BlockStore, out: Path, model: Any) -> dict[str, Any]:
        texts = [block_embedding_text(b) for b in blocks.get(range(len(blocks)))]
        part = BM25Index.build(texts, self.config)
        part.save(out / PART)
        return {"dir": PART, "analysis": asdict(self.config), "blocks": part.count}
