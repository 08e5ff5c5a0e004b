"""Models served by this process, by name and version, each with the index its own block embedder built.

On disk a home holds ``models/<name>/<version>/`` (DESIGN.md). At start :meth:`Registry.from_home`
loads the newest version of every model (or only ``settings.model``) and pairs it with the newest index
version whose manifest names that model version as its embedder; when none exists and the model names a
``default_corpus``, that index is built first. Admin calls load and unload versions while serving
(Triton's model repository): a version that fails to load is recorded as ``failed`` with its error and
changes nothing that serves. ``"name"`` resolves to the newest loaded version of that model.

Index versions are swapped under a serving model (:meth:`Registry.activate_index`: an admin call, the index
worker's notification, or :meth:`Registry.poll_indexes` finding a newly published version): the version is
opened beside the serving one, validated (checksums, ``ntotal``, the embedder named in its manifest, a
smoke search) and swapped in by :meth:`service.engine.QAEngine.swap_index`; a failure leaves the old one
serving and raises :class:`service.errors.IndexRejected` with the reason.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from index.build import build_index
from index.faiss_index import set_search_params
from index.version import IndexVersion, IndexVersionError, Manifest, list_versions, open_version, version_files
from realm_core.model_dir import load_model_dir, resolve_path
from service.engine import Engine, QAEngine
from service.errors import IndexRejected, InvalidInput, LoadFailed, NotFound

log = logging.getLogger(__name__)

# (event, ref, result): event "load" (result "success" | "failure"), "unload", "swap" (the version
# that "name" resolves to changed) with a model ref; "index_swap" ("success" | "failure") with an index ref.
Observer = Callable[[str, str, str], None]


def model_versions(home: Path, name: str) -> list[int]:
    d = home / "models" / name
    return sorted(int(p.name) for p in d.iterdir() if p.name.isascii() and p.name.isdigit()) if d.is_dir() else []


def model_names(home: Path) -> list[str]:
    d = home / "models"
    return sorted(p.name for p in d.iterdir() if p.is_dir() and model_versions(home, p.name)) if d.is_dir() else []


def find_index(home: Path, model_ref: str) -> tuple[str, int] | None:
    """(name, version) of the newest valid-looking index version built by ``model_ref``, or None."""
    found = find_indexes(home, model_ref)
    return found[0] if found else None


def find_indexes(home: Path, model_ref: str) -> list[tuple[str, int]]:
    """(name, version) of every index version built by ``model_ref``, newest first (creation time, then
    version number: two versions published within one second tie on ``created_at``)."""
    found = [(m.created_at, v, name) for name, v, m in index_manifests(home) if m.embedder == model_ref]
    return [(name, v) for _, v, name in sorted(found, reverse=True)]


def index_manifests(home: Path) -> list[tuple[str, int, Manifest]]:
    """(name, version, manifest) of every published index version in the home with a readable manifest."""
    out = []
    d = home / "indexes"
    for name in sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []:
        for v in list_versions(d, name):
            try:
                out.append((name, v, Manifest.read(version_files(d / name / str(v)).manifest)))
            except IndexVersionError:
                continue
    return out


@dataclass(frozen=True)
class SearchParams:
    """Search parameters applied to every index version when it is opened (where its kind has them)."""

    nprobe: int = 16  # IVF kinds
    ef_search: int = 64  # HNSW


def open_index(home: Path, name: str, version: int | None, params: SearchParams) -> IndexVersion:
    """Open and validate an index version of the home and apply the search parameters.

    Raises:
        index.version.IndexVersionError: no such version, or it fails validation.
    """
    iv = open_version(home / "indexes", name, version)
    set_search_params(iv.index, params.nprobe, params.ef_search)
    return iv


def load_engine(home: Path, name: str, version: int | None = None, build_missing: bool = True,
                params: SearchParams | None = None) -> QAEngine:
    """A version of model ``name`` (the newest when None) with its index (built from ``default_corpus`` if
    missing and ``build_missing``).

    Raises:
        realm_core.model_dir.ModelDirError, index.version.IndexVersionError, FileNotFoundError.
    """
    if version is None:
        version = model_versions(home, name)[-1]
    root = home / "models" / name / str(version)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist")
    model = load_model_dir(root, name, version)
    candidates = find_indexes(home, model.ref)
    for i, found in enumerate(candidates):  # the newest version that opens; a corrupt one is skipped
        try:
            return QAEngine(model, open_index(home, *found, params or SearchParams()))
        except IndexVersionError as e:
            if i == len(candidates) - 1:
                raise
            log.warning("index %s/%d cannot serve %s, trying an older version: %s", *found, model.ref, e)
    if not candidates:
        corpus = json.loads((root / "model.json").read_text()).get("default_corpus")
        if not (build_missing and corpus):
            raise FileNotFoundError(f"no index in {home / 'indexes'} was built by {model.ref}")
        log.info("no index for %s yet: building one from %s", model.ref, corpus)
        m = build_index(model, resolve_path(root, corpus), home / "indexes", name)
        found = (m.name, m.version)
    return QAEngine(model, open_index(home, *found, params or SearchParams()))


def split_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` → (name, None); ``"name/3"`` → (name, 3).

    Raises:
        NotFound: the version part is not a number (param ``model``).
    """
    name, slash, v = ref.partition("/")
    if not slash:
        return name, None
    if not (v.isascii() and v.isdigit()):  # '²'.isdigit() is true, int('²') raises
        raise NotFound(f"model {ref!r}: the version must be a number (ASCII digits)", param="model")
    return name, int(v)


@dataclass
class VersionInfo:
    version: int
    state: str  # "ready" (serving), "available" (on disk, not loaded), "unloaded", "failed"
    index: str | None = None  # index name/version it serves, when ready
    error: str | None = None  # why the last load failed, when failed


class Registry:
    """Engines by model name and version.

    Args:
        engines: engines to serve from the start, by model name (their ``model_ref`` gives the version).
        loader: ``(name, version) -> Engine`` for admin loads; None: loads are refused (404).
        on_disk: ``() -> {name: [versions]}`` of what could be loaded; None: only what is served.
        default: the model a request without ``"model"`` gets (name or name/version); None: the first.
        home: where index versions are found for :meth:`activate_index` and :meth:`poll_indexes`; None: the
            engines' indexes cannot be swapped.
        search: search parameters applied to index versions swapped in.
    """

    def __init__(self, engines: dict[str, Engine] | None = None, loader: Callable[[str, int], Engine] | None = None,
                 on_disk: Callable[[], dict[str, list[int]]] | None = None, default: str | None = None,
                 home: Path | None = None, search: SearchParams | None = None) -> None:
        self._served: dict[str, dict[int, Engine]] = {}
        for name, e in (engines or {}).items():
            self._served.setdefault(name, {})[split_ref(e.model_ref)[1] or 0] = e
        self._loader, self._on_disk = loader, on_disk
        self._default = default
        self._state: dict[tuple[str, int], VersionInfo] = {}
        self._lock = threading.Lock()  # one load or unload at a time; readers see whole dicts (copy on write)
        self.observers: list[Observer] = []
        self._home, self._search = home, search or SearchParams()
        # index versions already published when serving began or at the last poll (poll_indexes)
        self._known_indexes = {(n, v) for n, v, _ in index_manifests(home)} if home is not None else None

    @classmethod
    def from_home(cls, home: Path, only: str | None = None, build_missing: bool = True,
                  default: str | None = None, search: SearchParams | None = None) -> Registry:
        """Every model of the home at its newest version (or only ``only``), loaded now.

        Raises:
            NotFound: ``only`` is not in the home, or ``default`` is not loaded.
        """
        names = model_names(home)
        engines: dict[str, Engine] = {}
        if only is not None:
            name, version = split_ref(only)
            if name not in names or (version is not None and version not in model_versions(home, name)):
                raise NotFound(f"model {only!r} is not in {home / 'models'}", param="model")
            engines[name] = load_engine(home, name, version, build_missing, search)
        else:
            engines = {n: load_engine(home, n, None, build_missing, search) for n in names}
        if default is not None and split_ref(default)[0] not in engines:
            raise NotFound(f"default model {default!r} is not among the models loaded: {sorted(engines)}",
                           param="default_model")
        return cls(engines, loader=lambda n, v: load_engine(home, n, v, build_missing, search),
                   on_disk=lambda: {n: model_versions(home, n) for n in model_names(home)}, default=default,
                   home=home, search=search)

    def served(self) -> list[Engine]:
        """Every loaded engine, by model name then version."""
        return [e for name in sorted(self._served) for _, e in sorted(self._served[name].items())]

    def default_name(self) -> str | None:
        if self._default is not None:
            return split_ref(self._default)[0]
        return next(iter(self._served), None)

    def get(self, ref: str | None) -> Engine:
        """The engine for ``"name"`` (its newest loaded version), ``"name/version"``, or None (the default).

        Raises:
            NotFound: no such model or version is served (param ``model``).
        """
        if not any(self._served.values()):
            raise NotFound("no model is served", param="model")
        if ref is None:
            ref = self._default or self.default_name()
        assert ref is not None
        name, version = split_ref(ref)
        versions = self._served.get(name) or {}
        engine = versions.get(version) if version is not None else (versions[max(versions)] if versions else None)
        if engine is None:
            raise NotFound(f"model {ref!r} is not served; served: {[e.model_ref for e in self.served()]}",
                           param="model")
        return engine

    def load(self, name: str, version: int) -> Engine:
        """Load a version and serve it (blocking: call from a worker thread). A failure leaves what serves
        untouched and is recorded (state ``failed``, the error) for :meth:`describe`.

        Raises:
            NotFound: no such version on disk (or no loader).
            LoadFailed: loading raised; the message says why.
        """
        if self._loader is None or version not in self._disk().get(name, []):
            raise NotFound(f"model {name}/{version} is not in the registry", param="model")
        ref = f"{name}/{version}"
        with self._lock:
            before = self._newest(name)
            try:
                engine = self._loader(name, version)
            except Exception as e:  # any load failure is reported, never fatal to what serves
                log.warning("loading %s failed: %s", ref, e)
                self._state[(name, version)] = VersionInfo(version, "failed", error=f"{type(e).__name__}: {e}")
                self._notify("load", ref, "failure")
                raise LoadFailed(f"loading {ref} failed ({type(e).__name__}: {e}); "
                                 f"still serving {[x.model_ref for x in self.served()]}", param="model") from e
            self._served = {**self._served, name: {**self._served.get(name, {}), version: engine}}
            self._state.pop((name, version), None)
            self._notify("load", ref, "success")
            if before is not None and before != self._newest(name):
                self._notify("swap", ref, "success")
        log.info("loaded %s on %s", ref, engine.index_ref)
        return engine

    def unload(self, name: str, version: int) -> None:
        """Stop serving a version; requests already queued on it still finish.

        Raises:
            NotFound: that version is not loaded.
        """
        ref = f"{name}/{version}"
        with self._lock:
            if version not in self._served.get(name, {}):
                raise NotFound(f"model {ref} is not loaded", param="model")
            rest = {v: e for v, e in self._served[name].items() if v != version}
            self._served = {**{n: vs for n, vs in self._served.items() if n != name}, **({name: rest} if rest else {})}
            self._state[(name, version)] = VersionInfo(version, "unloaded")
            self._notify("unload", ref, "success")
        log.info("unloaded %s", ref)

    def activate_index(self, name: str, version: int) -> list[Engine]:
        """Swap index version ``name/version`` in under the served model whose block embedder built it
        (blocking: call from a worker thread). An older version than the serving one is a rollback.

        Raises:
            NotFound: no such index version (param ``index``).
            IndexRejected: it fails validation, or no served model built it; the old version keeps serving.
        """
        ref = f"{name}/{version}"
        if self._home is None or version not in list_versions(self._home / "indexes", name):
            raise NotFound(f"index {ref} is not published", param="index")
        with self._lock:
            try:
                iv = open_index(self._home, name, version, self._search)
                engines = [e for e in self.served() if e.model_ref == iv.manifest.embedder]
                if not engines:
                    raise ValueError(f"it was built by {iv.manifest.embedder}, which is not served "
                                     f"(served: {[e.model_ref for e in self.served()]})")
                for e in engines:
                    if e.index_ref != ref:
                        e.swap_index(iv)
            except (IndexVersionError, ValueError) as err:
                log.warning("index %s rejected: %s", ref, err)
                self._notify("index_swap", ref, "failure")
                raise IndexRejected(f"index {ref} was not activated: {err}; still serving "
                                    f"{sorted({e.index_ref for e in self.served()})}", param="index") from err
            self._notify("index_swap", ref, "success")
        return engines

    def poll_indexes(self) -> list[str]:
        """Activate index versions published since the registry was made or last polled (so a rollback is
        never undone by polling) that a served model built; the newest per model.
        A rejected version is logged and not retried. Returns the refs activated."""
        if self._home is None:
            return []
        found = index_manifests(self._home)
        known, self._known_indexes = self._known_indexes, {(n, v) for n, v, _ in found}
        if known is None:
            return []
        newest: dict[str, tuple[str, int]] = {}
        for n, v, m in found:
            if (n, v) not in known and (m.embedder not in newest or v > newest[m.embedder][1]):
                newest[m.embedder] = (n, v)
        served = {e.model_ref for e in self.served()}
        done = []
        for embedder, (n, v) in newest.items():
            if embedder not in served:
                continue
            try:
                self.activate_index(n, v)
                done.append(f"{n}/{v}")
            except (IndexRejected, NotFound) as e:
                log.warning("polling: %s", e.message)
        return done

    def describe(self) -> dict[str, list[VersionInfo]]:
        """Every model on disk or served, with each version's state, by name."""
        disk = self._disk()
        out: dict[str, list[VersionInfo]] = {}
        for name in sorted(set(disk) | set(self._served)):
            served = self._served.get(name, {})
            infos = []
            for v in sorted(set(disk.get(name, [])) | set(served)):
                if v in served:
                    infos.append(VersionInfo(v, "ready", index=served[v].index_ref))
                else:
                    infos.append(self._state.get((name, v), VersionInfo(v, "available")))
            out[name] = infos
        return out

    def _disk(self) -> dict[str, list[int]]:
        return self._on_disk() if self._on_disk is not None else {n: sorted(vs) for n, vs in self._served.items()}

    def _newest(self, name: str) -> int | None:
        return max(self._served.get(name, {}), default=None)

    def _notify(self, event: str, ref: str, result: str) -> None:
        for f in self.observers:
            f(event, ref, result)


@dataclass
class IndexInfo:
    name: str
    version: int
    embedder: str  # model ref whose block embedder built it ("" when not on disk)
    blocks: int
    created_at: str
    served_by: list[str]  # model refs serving it


def describe_indexes(home: Path, served: list[Engine]) -> list[IndexInfo]:
    """Every index version in the home, and any served one not there, with the models serving each."""
    by_index: dict[str, list[Engine]] = {}
    for e in served:
        by_index.setdefault(e.index_ref, []).append(e)
    out = [IndexInfo(n, v, m.embedder, m.count, m.created_at, [e.model_ref for e in by_index.pop(f"{n}/{v}", [])])
           for n, v, m in index_manifests(home)]
    for ref, engines in by_index.items():
        name, version = split_ref(ref)
        out.append(IndexInfo(name, version or 0, "", engines[0].block_count, "", [e.model_ref for e in engines]))
    return sorted(out, key=lambda i: (i.name, i.version))


def enqueue_build(home: Path, index: str, model: str, corpus: str, factory: str) -> str:
    """Write a build job for the index worker into ``<home>/jobs/``; returns the job id.

    Raises:
        InvalidInput: a bad index name, corpus path or factory string (naming the field).
        NotFound: the model is not in the home (param ``model``).
    """
    from index.worker import submit_job

    if not index or index.startswith(".") or "/" in index:
        raise InvalidInput(f"bad index name {index!r}", param="name")
    name, version = split_ref(model)
    if name not in model_names(home) or (version is not None and version not in model_versions(home, name)):
        raise NotFound(f"model {model!r} is not in {home / 'models'}", param="model")
    if not Path(corpus).is_file():
        raise InvalidInput(f"corpus {corpus} is not a file the service can see", param="corpus")
    try:
        return submit_job(home, index, model, str(Path(corpus).resolve()), factory).id
    except ValueError as e:
        raise InvalidInput(str(e), param="factory") from None
