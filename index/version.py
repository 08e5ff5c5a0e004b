"""Index versions: immutable directories ``<indexes>/<name>/<version>/`` published atomically.

A version holds ``manifest.json``, the FAISS index, the block store and any extra parts a build added (a
sparse index, ...); :func:`version_files` is the one place that names the core paths. :func:`publish` hashes
every file once (sha256), records its size, writes the manifest with a checksum of its own contents, fsyncs,
and renames the staging directory to the next version number, so a version is either absent or complete; it
gives up after a bounded number of tries. :func:`open_version` checks the manifest checksum, the file sizes
and ``ntotal == number of blocks`` (cheap at any size); :func:`verify_version` re-hashes every file
(``realmqa index verify``). Format 1 manifests (no sizes, no manifest checksum) are re-hashed on open.

The manifest identifies the block embedder by content (``embedder_id``, :mod:`realm_core.model_spec`), and
by the model version that built it (``embedder``, for people). A format 1 manifest has only ``embedder``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss

from index.block_store import BlockStore
from index.home import parse_version
from index.options import PUBLISH_TRIES
from realm_core.atomic import fsync_dir
from realm_core.model_spec import sha256_file

MANIFEST_FORMAT = 2


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
    checksums: dict[str, str]  # file path inside the version → sha256
    created_at: str
    format: int = MANIFEST_FORMAT
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    embedder_id: str = ""  # content id of the block embedder (realm_core.model_spec); "" in format 1
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)  # file path → bytes (format 2)
    parts: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra part name → what its builder said
    manifest_sha256: str = ""  # sha256 of this manifest's canonical JSON without this field (format 2)

    def content_sha256(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("manifest_sha256")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Raises: IndexVersionError: missing, unreadable (permissions, bad UTF-8), not a manifest, or (format 2)
        its checksum does not match its contents."""
        try:
            d = json.loads(path.read_bytes().decode("utf-8"))
            m = cls(**d)
        except FileNotFoundError:
            raise IndexVersionError(f"{path} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
            raise IndexVersionError(f"{path} is not a readable manifest: {e}") from None
        if m.format >= 2 and m.manifest_sha256 != m.content_sha256():
            raise IndexVersionError(f"{path} does not match its own checksum (edited or damaged)")
        return m


def list_versions(indexes_dir: str | Path, name: str) -> list[int]:
    """Published version numbers of an index, ascending (hidden staging and work directories are not)."""
    d = Path(indexes_dir) / name
    if not d.is_dir():
        return []
    return sorted(v for p in d.iterdir() if (v := parse_version(p.name)) is not None and p.is_dir())


def _files(root: Path) -> list[Path]:
    """Every regular file of a version but its manifest, by path."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")


def publish(staging: Path, manifest_fields: dict[str, Any], tries: int = PUBLISH_TRIES) -> Manifest:
    """Hash, size and fsync every file in ``staging``, write the manifest, rename to the next version number.

    ``manifest_fields`` holds every :class:`Manifest` field but version, checksums, sizes, created_at and
    manifest_sha256. The next number is one past every numbered entry beside the versions (a file or an
    unreadable directory named ``3`` is not overwritten); each try that loses the rename to another publisher
    or finds the path occupied moves on to the next number.

    Raises:
        IndexVersionError: the staged files fail validation, or ``tries`` version numbers were all occupied.
    """
    files = _files(staging)
    checksums, sizes = {}, {}
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        rel = f.relative_to(staging).as_posix()
        checksums[rel], sizes[rel] = sha256_file(f), f.stat().st_size
    parent = staging.parent
    taken = max((v for p in parent.iterdir() if (v := parse_version(p.name)) is not None), default=0)
    last: OSError | None = None
    for version in range(taken + 1, taken + 1 + tries):
        m = Manifest(**manifest_fields, version=version, checksums=checksums, sizes=sizes, format=MANIFEST_FORMAT,
                     created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        m = dataclasses.replace(m, manifest_sha256=m.content_sha256())
        write_manifest(staging, m)
        index, blocks = validate(staging, m)
        blocks.close()
        del index
        try:
            os.rename(staging, parent / str(version))  # atomic; fails if that path exists (another publisher)
        except OSError as e:
            last = e
            continue
        fsync_dir(parent)
        return m
    raise IndexVersionError(f"could not publish {manifest_fields.get('name')}: versions {taken + 1}.."
                            f"{taken + tries} were all occupied ({last})")


def write_manifest(root: Path, m: Manifest) -> None:
    path = version_files(root).manifest
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(dataclasses.asdict(m), indent=2))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(root)


def validate(root: Path, m: Manifest, full: bool = False) -> tuple[faiss.Index, BlockStore]:
    """Open a version's index and block store and check them against its manifest: sizes (format 2) or sha256
    (format 1, or ``full``) of every file it lists, then ``ntotal``, ``d`` and the block count.

    Raises:
        IndexVersionError: a missing file, a size or checksum mismatch, ``ntotal`` or ``d`` differing from the
            manifest, or a block count differing from ``ntotal``.
    """
    files = version_files(root)
    for f in (files.faiss_index, files.blocks):
        if f.name not in m.checksums:
            raise IndexVersionError(f"{root}: the manifest lists no checksum for {f.name}")
    for rel, digest in m.checksums.items():
        f = root / rel
        if not f.is_file():
            raise IndexVersionError(f"{f} is missing")
        if m.format >= 2 and not full:
            if f.stat().st_size != m.sizes.get(rel):
                raise IndexVersionError(f"{f} has {f.stat().st_size} bytes, the manifest says {m.sizes.get(rel)}")
        elif sha256_file(f) != digest:
            raise IndexVersionError(f"{f} does not match its checksum in the manifest")
    index = read_mapped(files.faiss_index)
    try:
        blocks = BlockStore(files.blocks)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise IndexVersionError(f"{files.blocks} cannot be read: {e}") from None
    if index.ntotal != m.count or len(blocks) != m.count or index.d != m.dim:
        n = len(blocks)
        blocks.close()
        raise IndexVersionError(
            f"{root}: manifest says {m.count} blocks of dim {m.dim}, index has {index.ntotal} of dim {index.d}, "
            f"block store has {n}")
    return index, blocks


def read_mapped(path: Path) -> faiss.Index:
    """A FAISS index file opened through a memory map where faiss can (flat codes, HNSW storage, inverted
    lists): opening costs no read, pages come from the page cache as searches touch them (and can be evicted).
    faiss advises the mapping ``MADV_RANDOM`` (a fault reads one page): bring it in with
    :func:`index.resident.warm_file` before it serves. The index must not be modified.

    Raises:
        IndexVersionError: faiss cannot read the file.
    """
    last: RuntimeError | None = None
    # IO_FLAG_MMAP_IFC maps flat codes (Flat, HNSW storage); IVF kinds refuse it with IO_FLAG_MMAP
    for flags in (faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC, faiss.IO_FLAG_MMAP):
        try:
            return faiss.read_index(str(path), flags)
        except RuntimeError as e:
            last = e
    raise IndexVersionError(f"{path} cannot be read: {str(last).splitlines()[0]}") from None


@dataclass
class IndexVersion:
    """A loaded, validated index version: its manifest, FAISS index and block store."""

    manifest: Manifest
    index: faiss.Index
    blocks: BlockStore
    root: Path

    @property
    def ref(self) -> str:
        return self.manifest.ref

    def close(self) -> None:
        """Release the block store's memory map (the FAISS index is freed with the last reference)."""
        if not self.blocks.closed:
            self.blocks.close()


def open_version(indexes_dir: str | Path, name: str, version: int | None = None, full: bool = False) -> IndexVersion:
    """Load and validate a published version (the newest when ``version`` is None); ``full`` re-hashes every
    file (otherwise format 2 checks sizes and the manifest's own checksum).

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
    index, blocks = validate(root, m, full)
    return IndexVersion(m, index, blocks, root)


def verify_version(indexes_dir: str | Path, name: str, version: int) -> Manifest:
    """The full check (``realmqa index verify``): every file re-hashed against the manifest, then opened.

    Raises:
        IndexVersionError: what is wrong.
    """
    iv = open_version(indexes_dir, name, version, full=True)
    iv.close()
    return iv.manifest
