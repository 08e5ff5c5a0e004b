"""Index versions of a home as the service sees them: listing (unreadable ones included), which ones a model
may serve (same block embedder, by content), opening with search parameters, and build jobs.

A model serves an index version when the manifest's ``embedder_id`` equals the model's block embedder id
(:mod:`realm_core.model_spec`). A format 1 manifest has no ``embedder_id``: its ``embedder`` model version,
when still in the home, stands in with its own id; else only that exact model version serves it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from index.faiss_index import set_search_params
from index.home import Home, parse_version
from index.jobs import JobError, submit_job
from index.options import SearchParams
from index.version import IndexVersion, IndexVersionError, Manifest, list_versions, open_version, version_files
from service.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from service.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: int
    manifest: Manifest | None  # None: unreadable
    error: str | None = None  # why the manifest cannot be read

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


def index_entries(home: Home) -> list[IndexEntry]:
    """Every published index version of the home; one whose manifest cannot be read (missing, bad UTF-8, not
    JSON, edited, unreadable file) is listed with the error, never raised."""
    out = []
    for name in home.index_names():
        for v in list_versions(home.indexes_dir, name):
            try:
                out.append(IndexEntry(name, v, Manifest.read(version_files(home.index_dir(name, v)).manifest)))
            except IndexVersionError as e:
                log.warning("index %s/%d is unreadable: %s", name, v, e)
                out.append(IndexEntry(name, v, None, str(e)))
    return out


@lru_cache(maxsize=256)
def _model_embedder_id(root: Path, ref: str) -> str:
    """The block embedder id of a model version of a home ("" when it cannot be read). Cached: model
    versions are immutable."""
    try:
        return Home(root).model_version(ref).embedder_id
    except (LookupError, ValueError, OSError):
        return ""


def model_embedder_id(home: Home, ref: str) -> str:
    return _model_embedder_id(home.root, ref)


def embedder_id_of(home: Home, m: Manifest) -> str:
    """The manifest's block embedder id, or for a format 1 manifest its model version's ("" if unknown)."""
    return m.embedder_id or model_embedder_id(home, m.embedder)


def serves(home: Home, m: Manifest, model_ref: str, embedder_id: str) -> bool:
    """Whether a model version (``model_ref`` with block embedder ``embedder_id``) may serve the index."""
    found = embedder_id_of(home, m)
    return found == embedder_id if found and embedder_id else m.embedder == model_ref


def find_indexes(home: Home, model_ref: str, embedder_id: str) -> list[tuple[str, int]]:
    """(name, version) of every readable index version the model may serve, newest first (creation time, then
    version number: two versions published within one second tie on ``created_at``)."""
    found = [(e.manifest.created_at, e.version, e.name) for e in index_entries(home)
             if e.manifest is not None and serves(home, e.manifest, model_ref, embedder_id)]
    return [(name, v) for _, v, name in sorted(found, reverse=True)]


def open_index(home: Home, name: str, version: int, params: SearchParams) -> IndexVersion:
    """Open and validate an index version and apply the search parameters; a format 1 manifest gets its
    ``embedder_id`` filled in from its model version when that is in the home.

    Raises:
        index.version.IndexVersionError: no such version, or it fails validation.
    """
    iv = open_version(home.indexes_dir, name, version)
    if not iv.manifest.embedder_id:
        iv.manifest = dataclasses.replace(iv.manifest, embedder_id=embedder_id_of(home, iv.manifest))
    set_search_params(iv.index, params.nprobe, params.ef_search)
    return iv


@dataclass
class IndexInfo:
    name: str
    version: int
    embedder: str  # model ref whose block embedder built it ("" when not on disk)
    blocks: int
    created_at: str
    served_by: list[str]  # model refs serving it
    state: str = "ok"  # "ok" | "unreadable" (its manifest cannot be read)
    error: str | None = None  # why, when unreadable


def describe_indexes(home: Path | Home, served: list[Engine]) -> list[IndexInfo]:
    """Every index version in the home (an unreadable one with its error), and any served one not there,
    with the models serving each."""
    by_index: dict[str, list[Engine]] = {}
    for e in served:
        by_index.setdefault(e.index_ref, []).append(e)
    out = []
    for entry in index_entries(home if isinstance(home, Home) else Home(home)):
        m = entry.manifest
        users = [e.model_ref for e in by_index.pop(entry.ref, [])]
        out.append(IndexInfo(entry.name, entry.version, m.embedder, m.count, m.created_at, users) if m is not None
                   else IndexInfo(entry.name, entry.version, "", 0, "", users, "unreadable", entry.error))
    for ref, engines in by_index.items():
        name, _, v = ref.partition("/")
        version = parse_version(v) or 0
        out.append(IndexInfo(name, version, "", engines[0].block_count, "", [e.model_ref for e in engines]))
    return sorted(out, key=lambda i: (i.name, i.version))


def enqueue_build(home: Home, index: str, model: str, corpus: str, factory: str) -> str:
    """Write a build job for the index worker; returns the job id.

    Raises:
        InvalidInput: a bad index name, corpus path or factory string (naming the field).
        NotFound: the model is not in the home (param ``model``).
    """
    try:
        home.resolve_model(model)
    except (LookupError, ValueError):
        raise NotFound(f"model {model!r} is not in the registry", param="model") from None
    if not Path(corpus).is_file():
        raise InvalidInput(f"corpus {corpus} is not a file the service can see", param="corpus")
    try:
        return submit_job(home, index, model, str(Path(corpus).resolve()), factory).id
    except JobError as e:
        raise InvalidInput(str(e), param="name" if "index name" in str(e) else "factory") from None
