"""Models served by this process, by name and version, each with an index its own block embedder built.

On disk a home (:class:`index.home.Home`) holds model and index versions. At start :meth:`Registry.from_home`
loads the newest version of every model (or only ``settings.model``) and pairs it with the index version
pinned for its block embedder in the home (:mod:`index.pins`), else the newest one built by the same block embedder (by
content, :mod:`service.indexes`); when none exists and the model names a ``default_corpus``, that index is
built first (:func:`index.pipeline.build_and_publish`). An unreadable or corrupt version is skipped with a
warning, never stops the start. Admin calls load and unload versions while serving (Triton's model
repository): a version that fails to load is recorded as ``failed`` with its error and changes nothing that
serves. ``"name"`` resolves to the newest loaded version of that model.

Index versions are swapped under a serving model (:meth:`Registry.activate_index`: an admin call, the index
worker's notification, or :meth:`Registry.poll_indexes` finding a newly published version or a pin changed by
another replica): the version is opened beside the serving one, validated (sizes and manifest checksum,
``ntotal``, the block embedder, a smoke search), swapped in by :meth:`service.engine.QAEngine.swap_index`
and pinned; a failure leaves the old one serving and raises :class:`service.errors.IndexRejected`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from index.chunks import LocalExecutor
from index.home import Home
from index.home import split_ref as parse_ref
from index.options import BuildOptions, SearchParams
from index.pins import pin_for, pin_key, read_pins, set_pins
from index.pipeline import build_and_publish, corpus_request
from index.version import IndexVersionError
from realm_core.model_dir import load_model_dir
from realm_core.model_spec import resolve_path
from service.engine import Engine, QAEngine
from service.errors import IndexRejected, LoadFailed, NotFound
from service.indexes import (
    IndexInfo,
    describe_indexes,
    find_indexes,
    index_entries,
    model_embedder_id,
    open_index,
    serves,
)
from service.indexes import enqueue_build as _enqueue_build

log = logging.getLogger(__name__)

# (event, ref, result): event "load" (result "success" | "failure"), "unload", "swap" (the version
# that "name" resolves to changed) with a model ref; "index_swap" ("success" | "failure") with an index ref.
Observer = Callable[[str, str, str], None]

__all__ = ["IndexInfo", "Registry", "SearchParams", "VersionInfo", "describe_indexes", "enqueue_build", "find_index",
           "load_engine", "model_versions", "split_ref"]


def model_versions(home: Path | Home, name: str) -> list[int]:
    return _home(home).model_versions(name)


def _home(home: Path | Home) -> Home:
    return home if isinstance(home, Home) else Home(home)


def find_index(home: Path | Home, model_ref: str) -> tuple[str, int] | None:
    """(name, version) of the newest readable index version that model version may serve, or None."""
    home = _home(home)
    found = find_indexes(home, model_ref, model_embedder_id(home, model_ref))
    return found[0] if found else None


def load_engine(home: Path | Home, name: str, version: int | None = None, build_missing: bool = True,
                params: SearchParams | None = None, precision: str | None = None,
                build: BuildOptions | None = None) -> QAEngine:
    """A version of model ``name`` (the newest when None) with the index version pinned for it in the home,
    else the newest one its block embedder built that opens (a corrupt one is skipped with a warning); when
    there is none, one is built from the model's ``default_corpus`` if ``build_missing`` (with ``build``'s
    options, in this process on the CPU). ``precision``: the reader's, overriding ``model.json``'s (None: the
    model's own).

    Raises:
        realm_core.model_dir.ModelDirError, index.version.IndexVersionError, FileNotFoundError.
    """
    home, params = _home(home), params or SearchParams()
    if version is None:
        versions = home.model_versions(name)
        if not versions:
            raise FileNotFoundError(f"model {name!r} has no version in the home")
        version = versions[-1]
    root = home.model_dir(name, version)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist")
    model = load_model_dir(root, name, version, precision)
    candidates = find_indexes(home, model.ref, model.embedder_id)
    pinned = pin_for(read_pins(home), model.ref, model.embedder_id)
    if pinned is not None:
        pin = parse_ref(pinned)
        if pin in candidates:
            candidates = [pin] + [c for c in candidates if c != pin]
        else:
            log.warning("index %s pinned for %s is not an index it can serve; ignoring the pin", pinned, model.ref)
    for i, found in enumerate(candidates):  # the pinned or newest version that opens; a corrupt one is skipped
        try:
            return QAEngine(model, open_index(home, *found, params))
        except IndexVersionError as e:
            if i == len(candidates) - 1:
                raise
            log.warning("index %s/%d cannot serve %s, trying another version: %s", *found, model.ref, e)
    if not (build_missing and model.spec is not None and model.spec.default_corpus):
        raise FileNotFoundError(f"no index in the home was built by the block embedder of {model.ref}")
    corpus = resolve_path(root, model.spec.default_corpus)
    log.info("no index for %s yet: building one from %s", model.ref, corpus)
    mv = home.model_version(model.ref)
    options = dataclasses.replace(build or BuildOptions(), progress_bar=True)
    m = build_and_publish(home, corpus_request(name, mv, corpus), options,
                          LocalExecutor(model))
    return QAEngine(model, open_index(home, m.name, m.version, params))


def split_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` → (name, None); ``"name/3"`` → (name, 3).

    Raises:
        NotFound: a bad name or a version that is not ASCII digits (param ``model``).
    """
    try:
        return parse_ref(ref)
    except ValueError as e:
        raise NotFound(f"model {e}", param="model") from None


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
                 home: Path | Home | None = None, search: SearchParams | None = None) -> None:
        self._served: dict[str, dict[int, Engine]] = {}
        for name, e in (engines or {}).items():
            self._served.setdefault(name, {})[split_ref(e.model_ref)[1] or 0] = e
        self._loader, self._on_disk = loader, on_disk
        self._default = default
        self._state: dict[tuple[str, int], VersionInfo] = {}
        self._lock = threading.Lock()  # one load or unload at a time; readers see whole dicts (copy on write)
        self.observers: list[Observer] = []
        self._home = _home(home) if home is not None else None
        self._search = search or SearchParams()
        # index versions published and pins recorded when serving began or at the last poll (poll_indexes)
        self._known_indexes = {(e.name, e.version) for e in index_entries(self._home)} if self._home else None
        self._known_pins = read_pins(self._home) if self._home is not None else {}

    @classmethod
    def from_home(cls, home: Path | Home, only: str | None = None, build_missing: bool = True,
                  default: str | None = None, search: SearchParams | None = None,
                  precision: str | None = None, build: BuildOptions | None = None) -> Registry:
        """Every model of the home at its newest version (or only ``only``), loaded now, each with its pinned
        (else newest) index version.

        Raises:
            NotFound: ``only`` is not in the home, or ``default`` is not loaded.
        """
        home = _home(home)
        engines: dict[str, Engine] = {}
        if only is not None:
            try:
                name, version = home.resolve_model(only)
            except (LookupError, ValueError):
                raise NotFound(f"model {only!r} is not in the registry", param="model") from None
            engines[name] = load_engine(home, name, version, build_missing, search, precision, build)
        else:
            engines = {n: load_engine(home, n, None, build_missing, search, precision, build)
                       for n in home.model_names()}
        if default is not None and split_ref(default)[0] not in engines:
            raise NotFound(f"default model {default!r} is not among the models loaded: {sorted(engines)}",
                           param="default_model")
        return cls(engines, loader=lambda n, v: load_engine(home, n, v, build_missing, search, precision, build),
                   on_disk=lambda: {n: home.model_versions(n) for n in home.model_names()}, default=default,
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
        """Swap index version ``name/version`` in under every served model whose block embedder built it
        (blocking: call from a worker thread) and pin it for them in the home, so that it survives a restart.
        An older version than the serving one is a rollback; the version already served is a no-op.

        Raises:
            NotFound: no such index version (param ``index``).
            IndexRejected: it fails validation, or no served model built it; the old version keeps serving.
        """
        ref = f"{name}/{version}"
        home = self._home
        if home is None or version not in home.index_versions(name):
            raise NotFound(f"index {ref} is not published", param="index")
        with self._lock:
            iv = None
            try:
                entry = next(e for e in index_entries(home) if (e.name, e.version) == (name, version))
                if entry.manifest is None:
                    raise IndexVersionError(entry.error or "unreadable manifest")
                engines = [e for e in self.served()
                           if serves(home, entry.manifest, e.model_ref, model_embedder_id(home, e.model_ref))]
                if not engines:
                    raise ValueError(f"it was built by {entry.manifest.embedder}, whose block embedder no served "
                                     f"model has (served: {[e.model_ref for e in self.served()]})")
                if any(e.index_ref != ref for e in engines):
                    iv = open_index(home, name, version, self._search)
                    for e in engines:
                        if e.index_ref != ref:
                            e.swap_index(iv)
            except (IndexVersionError, ValueError) as err:
                if iv is not None and not any(e.index_ref == ref for e in self.served()):
                    iv.close()  # a rejected version holds no memory map
                log.warning("index %s rejected: %s", ref, err)
                self._notify("index_swap", ref, "failure")
                raise IndexRejected(f"index {ref} was not activated: {err}; still serving "
                                    f"{sorted({e.index_ref for e in self.served()})}", param="index") from err
            try:
                self._known_pins = set_pins(home, {pin_key(e.model_ref, model_embedder_id(home, e.model_ref)): ref
                                                   for e in engines})
            except OSError as err:  # serving changed; only surviving a restart is lost
                log.error("index %s serves but could not be pinned in %s: %s", ref, home.pins_path, err)
            if iv is not None:
                self._notify("index_swap", ref, "success")
        return engines

    def poll_indexes(self) -> list[str]:
        """Follow the home: activate index versions published since the registry was made or last polled
        that a served model may serve (the newest per model), then any pin another process changed (a rollback
        on another replica). A version neither new nor newly pinned is never activated by polling, so a
        rollback is never undone by it. A rejected version is logged and not retried. Returns the refs
        activated."""
        if self._home is None:
            return []
        home = self._home
        entries = [e for e in index_entries(home) if e.manifest is not None]
        known, self._known_indexes = self._known_indexes, {(e.name, e.version) for e in index_entries(home)}
        if known is None:
            return []
        wanted: dict[str, str] = {}  # model ref -> index ref to serve
        for engine in self.served():
            emb = model_embedder_id(home, engine.model_ref)
            new = [e for e in entries if (e.name, e.version) not in known
                   and e.manifest is not None and serves(home, e.manifest, engine.model_ref, emb)]
            if new:
                wanted[engine.model_ref] = max(new, key=lambda e: (e.manifest.created_at, e.version)).ref  # type: ignore[union-attr]
        pins, before = read_pins(home), self._known_pins
        self._known_pins = pins
        for engine in self.served():
            emb = model_embedder_id(home, engine.model_ref)
            pin = pin_for(pins, engine.model_ref, emb)
            if pin is not None and pin != pin_for(before, engine.model_ref, emb) and pin != engine.index_ref:
                wanted.setdefault(engine.model_ref, pin)
        done = []
        for ref in sorted(set(wanted.values())):
            n, v = split_ref(ref)
            try:
                self.activate_index(n, v or 0)
                done.append(ref)
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


def enqueue_build(home: Path | Home, index: str, model: str, corpus: str, factory: str) -> str:
    """See :func:`service.indexes.enqueue_build`."""
    return _enqueue_build(_home(home), index, model, corpus, factory)
