"""Models served by this process, each with the index its own block embedder built.

For issue-2 scope the registry loads the newest version of every model in ``<home>/models`` at start
and pairs it with the newest index version whose manifest names that model as its embedder; when none
exists and the model names a ``default_corpus``, that index is built first (progress shown).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from index.build import build_index
from index.version import IndexVersionError, Manifest, list_versions, open_version, version_files
from realm_core.model_dir import load_model_dir, resolve_path
from service.engine import Engine, QAEngine
from service.errors import NotFound

log = logging.getLogger(__name__)


def model_versions(home: Path, name: str) -> list[int]:
    d = home / "models" / name
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def model_names(home: Path) -> list[str]:
    d = home / "models"
    return sorted(p.name for p in d.iterdir() if p.is_dir() and model_versions(home, p.name)) if d.is_dir() else []


def find_index(home: Path, model_ref: str) -> tuple[str, int] | None:
    """(name, version) of the newest valid-looking index version built by ``model_ref``, or None."""
    best: tuple[str, int, str] | None = None
    d = home / "indexes"
    for name in sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []:
        for v in list_versions(d, name):
            try:
                m = Manifest.read(version_files(d / name / str(v)).manifest)
            except IndexVersionError:
                continue
            if m.embedder == model_ref and (best is None or m.created_at > best[2]):
                best = (name, v, m.created_at)
    return None if best is None else best[:2]


def load_engine(home: Path, name: str, build_missing: bool = True) -> QAEngine:
    """The newest version of model ``name`` with its index (built from ``default_corpus`` if missing).

    Raises:
        realm_core.model_dir.ModelDirError, index.version.IndexVersionError, FileNotFoundError.
    """
    version = model_versions(home, name)[-1]
    root = home / "models" / name / str(version)
    model = load_model_dir(root, name, version)
    found = find_index(home, model.ref)
    if found is None:
        corpus = json.loads((root / "model.json").read_text()).get("default_corpus")
        if not (build_missing and corpus):
            raise FileNotFoundError(f"no index in {home / 'indexes'} was built by {model.ref}")
        log.info("no index for %s yet: building one from %s", model.ref, corpus)
        m = build_index(model, resolve_path(root, corpus), home / "indexes", name)
        found = (m.name, m.version)
    return QAEngine(model, open_version(home / "indexes", *found))


class Registry:
    """Engines by model name; ``get(None)`` is the default (the first one added)."""

    def __init__(self, engines: dict[str, Engine] | None = None) -> None:
        self.engines: dict[str, Engine] = dict(engines or {})

    @classmethod
    def load(cls, home: Path, only: str | None = None, build_missing: bool = True) -> Registry:
        names = model_names(home)
        if only is not None:
            if only.split("/")[0] not in names:
                raise NotFound(f"model {only!r} is not in {home / 'models'}", param="model")
            names = [only.split("/")[0]]
        return cls({n: load_engine(home, n, build_missing) for n in names})

    def get(self, ref: str | None) -> Engine:
        """The engine for ``"name"`` or ``"name/version"`` (None: the default).

        Raises:
            NotFound: no such model or version is served (param ``model``).
        """
        if not self.engines:
            raise NotFound("no model is served", param="model")
        if ref is None:
            return next(iter(self.engines.values()))
        name = ref.split("/")[0]
        engine = self.engines.get(name)
        if engine is None or ("/" in ref and engine.model_ref != ref):
            raise NotFound(f"model {ref!r} is not served; served: {sorted(e.model_ref for e in self.engines.values())}",
                           param="model")
        return engine
