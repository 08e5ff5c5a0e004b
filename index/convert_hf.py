"""``realmqa convert-hf``: a Hugging Face REALM checkpoint → a registry model version and an index version.

The model goes to ``<home>/models/<name>/<v>`` (:func:`realm_core.hf_realm.write_model_dir`), the index to
``<home>/indexes/<name>/<w>``: an exact inner-product index (faiss ``IndexFlatIP``, factory ``"Flat"``) over
``block_emb`` and a block store from ``block_records.npy`` whose block ids are the row numbers as strings,
titles empty and texts the utf-8 decoded records. Row ``i`` of the index is block ``str(i)``, so
``/retrieve`` returns HF's ``retrieved_block_ids``.

Memory: ``block_emb`` is streamed from a memory map ``chunk_rows`` rows at a time into the index, which
holds the only full float32 copy (what faiss needs to search). ``block_records.npy`` is a pickled object
array, loaded whole (see :func:`realm_core.hf_realm.load_block_records`) and written to the store in batches.

Both versions are staged in hidden directories and renamed into place: the index is published (manifest
embedder ``<name>/<v>``) before the model directory appears, so a served model always has its index.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from index.block_store import BlockStoreWriter
from index.faiss_index import new_index
from index.version import Manifest, publish, remove_staging, staging_dir, version_files
from realm_core.checkpoint import CheckpointError
from realm_core.hf_realm import (
    block_emb_shape,
    iter_block_emb,
    load_block_records,
    open_checkpoint,
    write_model_dir,
)

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Converted:
    model_ref: str  # "name/version" of the new model version
    index: Manifest


def _next_model_version(models_dir: Path, name: str) -> int:
    d = models_dir / name
    return max((int(p.name) for p in d.iterdir() if p.name.isdigit()), default=0) + 1 if d.is_dir() else 1


def _block_text(record: object, row: int) -> str:
    """A block record as text: utf-8 decoded, as HF ``RealmRetriever.__call__`` (``retrieved_block.decode()``)."""
    if not isinstance(record, bytes):
        raise CheckpointError(f"block_records.npy row {row} is {type(record).__name__}, expected bytes")
    return record.decode("utf-8")


def write_hf_index(checkpoint: str | Path, indexes_dir: str | Path, name: str, embedder_ref: str,
                   block_max_tokens: int = 288, chunk_rows: int = 65536, progress: bool = True) -> Manifest:
    """Publish a new version of index ``name`` from a checkpoint's ``block_emb`` and ``block_records.npy``.

    Raises:
        CheckpointError: ``block_emb`` is missing, or its row count differs from the block records'.
        FileNotFoundError: no ``block_records.npy``.
    """
    ckpt = open_checkpoint(checkpoint)
    n, d = block_emb_shape(ckpt)
    records = load_block_records(ckpt.path)
    if len(records) != n:
        raise CheckpointError(f"block_emb has {n} rows but block_records.npy has {len(records)} blocks")
    index = new_index(d, "Flat")  # IndexFlatIP: exact MIPS, as HF's einsum over block_emb
    staging = staging_dir(indexes_dir, name)
    files = version_files(staging)
    try:
        bar = tqdm(total=n, desc=f"converting {name}", unit=" blocks", disable=not progress)
        row = 0
        with BlockStoreWriter(files.blocks, batch_rows=chunk_rows) as store:
            for xb in iter_block_emb(ckpt, chunk_rows):
                index.add(np.ascontiguousarray(xb, dtype=np.float32))
                for i in range(row, row + len(xb)):
                    store.add(str(i), "", _block_text(records[i], i))
                row += len(xb)
                bar.update(len(xb))
            count = store.count
        bar.close()
        del records
        faiss.write_index(index, str(files.faiss_index))
        manifest = publish(staging, dict(
            name=name, embedder=embedder_ref, dim=d, count=count, metric="inner_product", factory="Flat",
            block_max_tokens=block_max_tokens, corpus=f"{ckpt.path.name}/block_records.npy",
            extra={"source": "hf-realm", "checkpoint": str(ckpt.path.resolve()), "block_ids": "row numbers"}))
    except BaseException:
        remove_staging(staging)
        raise
    return manifest


def convert_hf_realm(checkpoint: str | Path, home: str | Path, name: str | None = None,
                     max_question_tokens: int | None = None, chunk_rows: int = 65536,
                     progress: bool = True) -> Converted:
    """Convert a saved ``RealmForOpenQA`` + ``RealmRetriever`` directory into ``home``.

    Args:
        checkpoint: the directory (see :mod:`realm_core.hf_realm`).
        home: a registry home; ``models/`` and ``indexes/`` are created if missing.
        name: model and index name; default the checkpoint directory's name.
        max_question_tokens: see :func:`realm_core.hf_realm.write_model_dir`.
        chunk_rows: ``block_emb`` rows read and added to the index at a time.

    Raises:
        ValueError: a name that is not a plain directory name.
        CheckpointError, FileNotFoundError: the checkpoint cannot be converted (message names what).
    """
    checkpoint, home = Path(checkpoint), Path(home)
    name = name or checkpoint.resolve().name
    if not NAME_RE.match(name):
        raise ValueError(f"name {name!r} must match {NAME_RE.pattern} (pass --name)")
    models_dir = home / "models"
    (models_dir / name).mkdir(parents=True, exist_ok=True)
    (home / "indexes").mkdir(parents=True, exist_ok=True)
    ckpt = open_checkpoint(checkpoint)
    model_stage = Path(tempfile.mkdtemp(dir=models_dir / name, prefix=".staging-"))
    try:
        spec = write_model_dir(ckpt, model_stage, max_question_tokens)
        version = _next_model_version(models_dir, name)
        manifest = write_hf_index(checkpoint, home / "indexes", name, f"{name}/{version}",
                                  int(spec["block_max_tokens"]), chunk_rows, progress)
        model_stage.chmod(0o755)
        for f in model_stage.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(model_stage, models_dir / name / str(version))  # fails if that version appeared meanwhile
    except BaseException:
        shutil.rmtree(model_stage, ignore_errors=True)
        raise
    log.info("converted %s into model %s/%d and index %s/%d", checkpoint, name, version, name, manifest.version)
    return Converted(f"{name}/{version}", manifest)
