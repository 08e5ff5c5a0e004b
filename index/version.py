"""Index versions: immutable directories ``<indexes>/<name>/<version>/`` published atomically.

A version holds ``manifest.json``, the FAISS index and the block store; :func:`version_files` is the one
place that names these paths. Publishing writes into a hidden temporary directory beside the target,
fsyncs every file and the directory, then renames it to the next version number, so a version is
either absent or complete. :func:`open_version` checks the manifest, the checksums and
``ntotal == number of blocks`` before anything is served.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss

from index.block_store import BlockStore

MANIFEST_FORMAT = 1


class IndexVersionError(ValueError):
    """A version directory that is incomplete, corrupt or inconsistent; the message says what."""


@dataclass(frozen=True)
class VersionFiles:
    root: Path
    manifest: Path
    faiss_index: Path
    blocks: Path


def version_files(root: str | Path) -> VersionFiles:
    """The paths inside an index version directory (the only function that builds them)."""
    root = Path(root)
    return VersionFiles(root, root / "manifest.json", root / "index.faiss", root / "blocks.arrow")


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    embedder: str  # "model_name/model_version" whose block embedder produced the embeddings
    dim: int
    count: int  # blocks == faiss ntotal
    metric: str  # "inner_product"
    factory: str  # faiss index_factory string, e.g. "Flat"
    block_max_tokens: int
    corpus: str  # where the blocks came from
    checksums: dict[str, str]  # file name → sha256
    created_at: str
    format: int = MANIFEST_FORMAT
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            d = json.loads(path.read_text())
            return cls(**d)
        except FileNotFoundError:
            raise IndexVersionError(f"{path} is missing") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise IndexVersionError(f"{path} is not a valid manifest: {e}") from None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def list_versions(indexes_dir: str | Path, name: str) -> list[int]:
    """Published version numbers of an index, ascending (temporary directories are not versions)."""
    d = Path(indexes_dir) / name
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and p.is_dir())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_dir(indexes_dir: str | Path, name: str) -> Path:
    """A fresh hidden directory beside the versions of ``name`` to write a version into."""
    parent = Path(indexes_dir) / name
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=parent, prefix=".staging-"))
    path.chmod(0o755)  # mkdtemp makes it private; a published version is readable by all
    return path


def publish(staging: Path, manifest_fields: dict[str, Any]) -> Manifest:
    """Checksum and fsync the files in ``staging``, write the manifest, rename to the next version.

    ``manifest_fields`` holds every :class:`Manifest` field but version, checksums and created_at.

    Raises:
        IndexVersionError: the staged files fail validation (see :func:`validate`).
    """
    files = version_files(staging)
    for f in (files.faiss_index, files.blocks):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    checksums = {f.name: sha256_file(f) for f in (files.faiss_index, files.blocks)}
    parent = staging.parent
    while True:
        version = max(list_versions(parent.parent, parent.name), default=0) + 1
        m = Manifest(**manifest_fields, version=version, checksums=checksums,
                     created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        files.manifest.write_text(json.dumps(dataclasses.asdict(m), indent=2))
        with open(files.manifest, "rb") as fh:
            os.fsync(fh.fileno())
        validate(staging, m)
        _fsync_dir(staging)
        try:
            os.rename(staging, parent / str(version))  # atomic; fails if another publisher won the number
        except OSError:
            continue
        _fsync_dir(parent)
        return m


def validate(root: Path, m: Manifest, check_sums: bool = True) -> tuple[faiss.Index, BlockStore]:
    """Open a version's index and block store and check them against its manifest.

    Raises:
        IndexVersionError: a missing file, a checksum mismatch, ``ntotal`` or ``d`` differing from the
            manifest, or a block count differing from ``ntotal``.
    """
    files = version_files(root)
    for f in (files.faiss_index, files.blocks):
        if not f.is_file():
            raise IndexVersionError(f"{f} is missing")
        if check_sums and sha256_file(f) != m.checksums.get(f.name):
            raise IndexVersionError(f"{f} does not match its checksum in the manifest")
    try:
        index = faiss.read_index(str(files.faiss_index), faiss.IO_FLAG_MMAP)
    except RuntimeError as e:
        raise IndexVersionError(f"{files.faiss_index} cannot be read: {str(e).splitlines()[0]}") from None
    try:
        blocks = BlockStore(files.blocks)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise IndexVersionError(f"{files.blocks} cannot be read: {e}") from None
    if index.ntotal != m.count or len(blocks) != m.count or index.d != m.dim:
        raise IndexVersionError(
            f"{root}: manifest says {m.count} blocks of dim {m.dim}, index has {index.ntotal} of dim {index.d}, "
            f"block store has {len(blocks)}")
    return index, blocks


@dataclass
class IndexVersion:
    """A loaded, validated index version: its manifest, FAISS index and block store."""

    manifest: Manifest
    index: faiss.Index
    blocks: BlockStore
    root: Path

    @property
    def ref(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"


def open_version(indexes_dir: str | Path, name: str, version: int | None = None) -> IndexVersion:
    """Load and validate a published version (the newest when ``version`` is None).

    Raises:
        IndexVersionError: no such version, or it fails :func:`validate`.
    """
    versions = list_versions(indexes_dir, name)
    if version is None:
        if not versions:
            raise IndexVersionError(f"index {name!r} has no published version in {indexes_dir}")
        version = versions[-1]
    root = Path(indexes_dir) / name / str(version)
    m = Manifest.read(version_files(root).manifest)
    if m.name != name or m.version != version:
        raise IndexVersionError(f"{root}: manifest names {m.name}/{m.version}")
    index, blocks = validate(root, m)
    return IndexVersion(m, index, blocks, root)


def remove_staging(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
