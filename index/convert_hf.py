"""``realmqa convert-hf``: a Hugging Face REALM checkpoint → a registry model version and an index version.

The model goes to ``<home>/models/<name>/<v>`` (:func:`realm_core.hf_realm.write_model_dir`), the index to
``<home>/indexes/<name>/<w>``: an exact inner-product index (faiss ``IndexFlatIP``, factory ``"Flat"``) over
``block_emb`` and a block store from ``block_records.npy`` whose block ids are the row numbers as strings,
titles empty and texts the utf-8 decoded records. Row ``i`` of the index is block ``str(i)``, so
``/retrieve`` returns HF's ``retrieved_block_ids``.

The index is built by the one pipeline (:func:`index.pipeline.build_and_publish`) without embedding:
:class:`index.chunks.ArrayExecutor` writes ``block_emb`` (read from a memory map ``chunk_rows`` rows at a time)
as the chunk embedding files. ``block_records.npy`` is a pickled object array, loaded whole (see
:func:`realm_core.hf_realm.load_block_records`) and written as block chunks.

Both versions are staged in hidden, locked directories (:class:`index.home.Scratch`: one a dead conversion left
is removed by the next conversion or index worker) and renamed into place: the index is published (manifest
embedder ``<name>/<v>`` and the model's block embedder id, cached in its ``model.json``) before the model
directory appears, so a served model always has its index.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from index.block_store import Block
from index.chunks import ArrayExecutor
from index.home import Home, ModelVersion, check_name
from index.pipeline import BuildOptions, BuildRequest, build_and_publish
from index.version import Manifest
from realm_core.checkpoint import CheckpointError
from realm_core.hf_realm import (
    HfRealmCheckpoint,
    block_emb_shape,
    iter_block_emb,
    load_block_records,
    open_checkpoint,
    write_model_dir,
)
from realm_core.model_spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Converted:
    model_ref: str  # "name/version" of the new model version
    index: Manifest


def _block_text(record: object, row: int) -> str:
    """A block record as text: utf-8 decoded, as HF ``RealmRetriever.__call__`` (``retrieved_block.decode()``)."""
    if not isinstance(record, bytes):
        raise CheckpointError(f"block_records.npy row {row} is {type(record).__name__}, expected bytes")
    return record.decode("utf-8")


def hf_index_request(ckpt: HfRealmCheckpoint, name: str, model: ModelVersion) -> BuildRequest:
    """The pipeline request for a checkpoint's blocks: row ``i`` of ``block_records.npy`` is block ``str(i)``.

    Raises:
        CheckpointError: ``block_emb`` is missing, or its row count differs from the block records'.
        FileNotFoundError: no ``block_records.npy``.
    """
    n, _ = block_emb_shape(ckpt)
    records = load_block_records(ckpt.path)
    if len(records) != n:
        raise CheckpointError(f"block_emb has {n} rows but block_records.npy has {len(records)} blocks")

    def blocks() -> Iterator[Block]:
        for i, r in enumerate(records):
            yield Block(str(i), "", _block_text(r, i))

    return BuildRequest(name, model, blocks, f"{ckpt.path.name}/block_records.npy",
                        extra={"source": "hf-realm", "checkpoint": str(ckpt.path.resolve()),
                               "block_ids": "row numbers"})


def convert_hf_realm(checkpoint: str | Path, home: str | Path | Home, name: str | None = None,
                     max_question_tokens: int | None = None, chunk_rows: int = 65536,
                     progress: bool = True) -> Converted:
    """Convert a saved ``RealmForOpenQA`` + ``RealmRetriever`` directory into ``home``.

    Args:
        checkpoint: the directory (see :mod:`realm_core.hf_realm`).
        home: a registry home; its model and index directories are created if missing.
        name: model and index name; default the checkpoint directory's name.
        max_question_tokens: see :func:`realm_core.hf_realm.write_model_dir`.
        chunk_rows: ``block_emb`` rows per chunk (read, written and added to the index at a time).

    Raises:
        ValueError: a name that is not a plain directory name.
        CheckpointError, FileNotFoundError: the checkpoint cannot be converted (message names what).
    """
    checkpoint = Path(checkpoint)
    home = home if isinstance(home, Home) else Home(home)
    name = name or checkpoint.resolve().name
    try:
        check_name(name)
    except ValueError as e:
        raise ValueError(f"{e} (pass --name)") from None
    ckpt = open_checkpoint(checkpoint)
    home.remove_dead_scratch(lambda job_id: True)  # staging left by conversions and builds that died
    scratch = home.new_model_staging(name)
    model_stage = scratch.path
    try:
        write_model_dir(ckpt, model_stage, max_question_tokens)
        spec = ModelSpec.read(model_stage).with_embedder_id(model_stage)  # cache the block embedder id
        spec.write(model_stage)
        version = max(home.model_versions(name), default=0) + 1
        model = ModelVersion(name, version, model_stage, spec)
        options = BuildOptions(chunk_blocks=chunk_rows, progress_bar=progress)
        manifest = build_and_publish(home, hf_index_request(ckpt, name, model), options,
                                     ArrayExecutor(iter_block_emb(ckpt, chunk_rows)))
        model_stage.chmod(0o755)
        for f in model_stage.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(model_stage, home.model_dir(name, version))  # fails if that version appeared meanwhile
    finally:
        scratch.release()  # the staging directory if it was not renamed into place, and its lock
    log.info("converted %s into model %s/%d and index %s", checkpoint, name, version, manifest.ref)
    return Converted(f"{name}/{version}", manifest)
