"""The one build pipeline: blocks → chunk files → block embeddings → FAISS index → recall → smoke search → publish.

:func:`build_and_publish` is the only code that builds an index version. ``realmqa index build``, the
service's build of a missing default index, the index worker (:mod:`index.worker`) and ``realmqa convert-hf``
(which skips embedding with :class:`index.chunks.ArrayExecutor`) all call it. Stages, all resumable from the
work directory (see :mod:`index.chunks` for its files):

1. **blocks**: the request's blocks are written as block chunk files (plus any :data:`index.chunks.BLOCK_COLUMNS`);
2. **embed**: the caller's :class:`index.chunks.EmbedExecutor` writes an embedding file per chunk that lacks one
   (local or Ray; the caller picks the device);
3. **faiss**: any factory string; IVF/PQ kinds trained on a sample (:func:`index.faiss_index.build_index`);
4. **recall**: approximate kinds get recall@k against exact search in the manifest's ``extra``;
5. **smoke search**: a stored embedding must find a block;
6. **publish**: block store, index file and extra parts (:data:`PART_BUILDERS`, e.g. a sparse index) are
   written into a hidden staging directory and published atomically with a bounded number of tries
   (:func:`index.version.publish`).

``progress.json`` in the work directory records the model version, its block embedder id, the chunk size and
the source's stamp: a resume under any other value starts over cleanly (never mixes embedders or chunk
sizes); after publishing it records the version, so a build killed between publishing and being filed is
never published twice.

**Extra parts of a version** (:data:`PART_BUILDERS`): a build whose options name a part calls its factory's
``build(blocks, out, model)`` with the version's block store (memory-mapped), the staging directory and the
model version; it writes its files into ``out`` (they are hashed and published with the version) and returns
what the manifest's ``parts[name]`` records.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from index.block_store import Block, BlockStore, BlockStoreWriter
from index.bm25 import BM25PartBuilder
from index.chunks import (
    Chunk,
    EmbedExecutor,
    EmbedRequest,
    block_columns,
    chunk_paths,
    store_schema,
    write_block_chunks,
)
from index.corpus import read_corpus, split_blocks
from index.faiss_index import build_index
from index.home import Home, ModelVersion, remove_tree
from index.options import BuildOptions
from index.version import Manifest, publish, version_files
from realm_core.atomic import write_atomic

log = logging.getLogger(__name__)


class PartBuilder(Protocol):
    def build(self, blocks: BlockStore, out: Path, model: ModelVersion) -> dict[str, Any]:
        """Write this part's files into ``out`` (the staging version directory); return the manifest's record."""
        ...


# name → factory; a build includes the parts its options name.
PART_BUILDERS: dict[str, Callable[[], PartBuilder]] = {"bm25": BM25PartBuilder}


@dataclass(frozen=True)
class BuildRequest:
    index: str  # index name: published as <indexes>/<index>/<next version>
    model: ModelVersion  # whose block embedder embeds
    blocks: Callable[[], Iterable[Block]]  # called only while block chunks remain to be written
    corpus: str  # where the blocks came from (the manifest's "corpus")
    source_stamp: Any = None  # JSON value that changes when the source changes; another one starts over
    extra: dict[str, Any] = field(default_factory=dict)  # more of the manifest's "extra"


def corpus_request(index: str, model: ModelVersion, corpus: str | Path) -> BuildRequest:
    """A request for a JSON Lines corpus split into blocks of ``block_max_tokens`` block-embedder wordpieces.

    Raises:
        OSError: the corpus cannot be read.
    """
    from realm_core.model_spec import resolve_path
    from realm_core.tokenizer import WordPieceTokenizer

    path = Path(corpus)
    st = path.stat()

    def blocks() -> Iterable[Block]:
        tok = WordPieceTokenizer.from_dir(resolve_path(model.root, model.spec.block.path))
        return split_blocks(read_corpus(path), tok, model.spec.block_max_tokens)

    return BuildRequest(index, model, blocks, path.name, [str(path.resolve()), st.st_size, st.st_mtime_ns])


def read_progress(work: Path) -> dict[str, Any]:
    """A build's ``progress.json`` (an empty dict when there is none or it cannot be read)."""
    try:
        d = json.loads((work / "progress.json").read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def blocks_embedded(progress: dict[str, Any]) -> int:
    rows = progress.get("block_chunks", [])
    return sum(rows[i] for i in progress.get("embedded", []) if i < len(rows))


def _save(work: Path, progress: dict[str, Any]) -> None:
    write_atomic(work / "progress.json", json.dumps(progress))


def _start(work: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The progress to resume from: the saved one when it was made for ``identity``, else a fresh start."""
    progress = read_progress(work)
    if progress and any(progress.get(k) != v for k, v in identity.items()):
        changed = sorted(k for k, v in identity.items() if progress.get(k) != v)
        log.warning("%s: %s changed since the interrupted run; starting over", work, ", ".join(changed))
        progress = {}
    if not progress and work.exists():  # files whose progress is lost or of another build
        remove_tree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not progress:
        progress = {**identity, "build_id": uuid.uuid4().hex, "block_chunks": [], "blocks_done": False,
                    "embedded": [], "runs": []}
        _save(work, progress)
    return progress


def build_and_publish(home: Home, request: BuildRequest, options: BuildOptions, executor: EmbedExecutor,
                      work: Path | None = None) -> Manifest:
    """Build and publish a new version of ``request.index`` (see the module docstring).

    Args:
        work: the resumable work directory (a job's); None: a fresh one, removed at the end either way.

    Raises:
        ValueError: bad options, a source with no blocks, embeddings of the wrong shape, a failed smoke search.
        index.corpus.CorpusError: a malformed corpus line.
        index.version.IndexVersionError: the staged version fails validation or could not be published.
    """
    options.check()
    scratch = home.new_scratch(request.index, "work") if work is None else None
    try:
        return _run(home, request, options, executor, scratch.path if scratch else work)  # type: ignore[arg-type]
    finally:
        if scratch is not None:
            scratch.release()


def _run(home: Home, request: BuildRequest, options: BuildOptions, executor: EmbedExecutor, work: Path) -> Manifest:
    model = request.model
    identity = {"model": model.ref, "embedder_id": model.embedder_id, "chunk_blocks": options.chunk_blocks,
                "source": request.source_stamp}
    progress = _start(work, identity)
    published = _published(home, request.index, progress)
    if published is not None:  # killed after publishing: never publish twice
        return published
    columns = block_columns(model)
    if not progress["blocks_done"]:
        if progress["block_chunks"]:
            log.info("%s: resuming after %d written block chunks", work, len(progress["block_chunks"]))

        def wrote(number: int, rows: int) -> None:
            progress["block_chunks"].append(rows)
            _save(work, progress)

        write_block_chunks(request.blocks(), work, options.chunk_blocks, columns, len(progress["block_chunks"]),
                           wrote)
        progress["blocks_done"] = True
        _save(work, progress)
    rows = progress["block_chunks"]
    if not rows:
        raise ValueError(f"{request.corpus} has no blocks")
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).tolist()
    chunks = [Chunk(i, int(s), r, *chunk_paths(work, i)) for i, (s, r) in enumerate(zip(starts, rows))]
    _embed(request, options, executor, work, progress, chunks)
    xbs = [np.load(c.embeddings, mmap_mode="r") for c in chunks]
    if any(x.shape != (c.rows, xbs[0].shape[1]) for x, c in zip(xbs, chunks)):
        raise ValueError(f"embedding chunks {[x.shape for x in xbs]} do not match block chunks {rows}")
    index, extra = build_index(xbs, options.factory, options.train_sample, options.search, options.recall_queries,
                               options.recall_k)
    _, I = index.search(np.ascontiguousarray(xbs[0][:1], dtype=np.float32), 1)
    if I[0, 0] < 0:
        raise ValueError("smoke search: a stored block embedding found no block")
    extra.update(chunks=len(chunks), embedding_runs=progress["runs"], build_id=progress["build_id"], **request.extra)
    m = _publish(home, request, options, chunks, index, extra, store_schema(columns))
    progress["published"] = m.version
    _save(work, progress)
    log.info("published index %s (%d blocks, %s)", m.ref, m.count, m.factory)
    return m


def _published(home: Home, index: str, progress: dict[str, Any]) -> Manifest | None:
    """The version this build already published: recorded in its progress, or (killed between the rename and
    recording it) the one whose manifest carries its ``build_id``."""
    if progress.get("published") is not None:
        return Manifest.read(version_files(home.index_dir(index, int(progress["published"]))).manifest)
    for v in reversed(home.index_versions(index)):
        try:
            m = Manifest.read(version_files(home.index_dir(index, v)).manifest)
        except ValueError:  # an unreadable version is not this build's
            continue
        if m.extra.get("build_id") == progress["build_id"]:
            return m
    return None


def _embed(request: BuildRequest, options: BuildOptions, executor: EmbedExecutor, work: Path,
           progress: dict[str, Any], chunks: list[Chunk]) -> None:
    todo = tuple(c for c in chunks if not c.embeddings.is_file())
    if not todo:
        return
    done = len(chunks) - len(todo)
    if done:
        log.info("resuming after %d finished chunks (%d blocks)", done, blocks_embedded(progress))
    run: dict[str, Any] = {"pid": os.getpid(), "started_at": time.time(), "chunks": []}
    progress["runs"].append(run)
    bar = tqdm(total=sum(c.rows for c in chunks), initial=sum(c.rows for c in chunks) - sum(c.rows for c in todo),
               desc=f"embedding {request.index}", unit=" blocks", disable=not options.progress_bar)
    t0 = time.perf_counter()

    def on_chunk(chunk: Chunk) -> None:
        progress["embedded"] = sorted({*progress["embedded"], chunk.number})
        run["chunks"].append(chunk.number)
        _save(work, progress)
        bar.update(chunk.rows)
        rate = sum(chunks[i].rows for i in run["chunks"]) / max(time.perf_counter() - t0, 1e-9)
        log.info("%s: chunk %d embedded (%d blocks so far, %.0f blocks/s)", request.index, chunk.number,
                 blocks_embedded(progress), rate)
        if options.chunk_pause_s:
            time.sleep(options.chunk_pause_s)

    executor.embed(EmbedRequest(request.model.root, request.model.ref, todo, options.batch_size), on_chunk)
    bar.close()
    missing = [c.number for c in chunks if not c.embeddings.is_file()]
    if missing:
        raise ValueError(f"the executor left chunks {missing} without embeddings")


def _publish(home: Home, request: BuildRequest, options: BuildOptions, chunks: list[Chunk], index: faiss.Index,
             extra: dict[str, Any], schema: pa.Schema) -> Manifest:
    scratch = home.new_scratch(request.index, "staging")
    staging = scratch.path
    files = version_files(staging)
    try:
        with BlockStoreWriter(files.blocks, schema=schema) as store:
            for c in chunks:
                with pa.memory_map(str(c.blocks), "r") as src:
                    store.add_table(pa.ipc.open_file(src).read_all())
            count = store.count
        faiss.write_index(index, str(files.faiss_index))
        parts: dict[str, Any] = {}
        if options.parts:
            blocks = BlockStore(files.blocks)
            try:
                for name in options.parts:
                    parts[name] = PART_BUILDERS[name]().build(blocks, staging, request.model)
            finally:
                blocks.close()
        model = request.model
        return publish(staging, dict(
            name=request.index, embedder=model.ref, embedder_id=model.embedder_id, dim=index.d, count=count,
            metric="inner_product", factory=options.factory, block_max_tokens=model.spec.block_max_tokens,
            corpus=request.corpus, extra=extra, parts=parts), options.publish_tries)
    finally:
        scratch.release()  # after a publish the directory is the version: only the lock is removed


def build_from_corpus(home: Home, index: str, model_ref: str, corpus: str | Path,
                      options: BuildOptions | None = None, executor: EmbedExecutor | None = None) -> Manifest:
    """:func:`build_and_publish` of a JSON Lines corpus with model ``model_ref``'s block embedder (by default
    embedded in this process on the CPU).

    Raises:
        LookupError: no such model in the home; anything :func:`build_and_publish` raises.
    """
    from index.chunks import LocalExecutor

    request = corpus_request(index, home.model_version(model_ref), corpus)
    return build_and_publish(home, request, options or BuildOptions(), executor or LocalExecutor())
