"""The home: the one owner of a registry directory's layout.

A home holds ``models/<name>/<version>/`` (model versions, ``model.json`` + files), ``indexes/<name>/<version>/``
(immutable index versions, :mod:`index.version`), ``indexes/.pins.json`` (which index version each model
serves, :mod:`index.pins`) and ``jobs/`` (build jobs, :mod:`index.jobs`). :class:`Home` is the only code that
spells these paths. Versions are positive integers written in ASCII digits without a leading zero; any other
entry (hidden staging and work directories, ``²``, ``01``) is never a version.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from realm_core.atomic import Scratch, remove_tree
from realm_core.atomic import new_scratch as _new_scratch
from realm_core.model_spec import ModelSpec

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")  # ASCII only: str.isdigit() also accepts "²" and "١"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def parse_version(text: str) -> int | None:
    """``"3"`` → 3; anything that is not a version (``"03"``, ``"²"``, ``"-1"``, ``".staging-x"``) → None."""
    return int(text) if VERSION_RE.fullmatch(text) else None


def split_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` → (name, None); ``"name/3"`` → (name, 3).

    Raises:
        ValueError: a bad name, or a version that is not ASCII digits.
    """
    name, slash, v = ref.partition("/")
    check_name(name)
    if not slash:
        return name, None
    version = parse_version(v)
    if version is None:
        raise ValueError(f"{ref!r}: the version must be a positive number in ASCII digits")
    return name, version


def check_name(name: str, what: str = "name") -> str:
    """A model or index name: a plain directory name (letters, digits, ``.``, ``_``, ``-``; not hidden).

    Raises:
        ValueError: naming ``what``.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{what} {name!r} must match {NAME_RE.pattern}")
    return name


def _versions(d: Path) -> list[int]:
    if not d.is_dir():
        return []
    return sorted(v for p in d.iterdir() if (v := parse_version(p.name)) is not None and p.is_dir())


@dataclass(frozen=True)
class ModelVersion:
    """A model version in a home, not loaded: where it is and its ``model.json``."""

    name: str
    version: int
    root: Path
    spec: ModelSpec

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def embedder_id(self) -> str:
        """The block embedder's content id (see :mod:`realm_core.model_spec`)."""
        return self.spec.block_embedder_id(self.root)


@dataclass(frozen=True)
class Home:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # --- models
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model_names(self) -> list[str]:
        d = self.models_dir
        return sorted(p.name for p in d.iterdir() if NAME_RE.fullmatch(p.name) and self.model_versions(p.name)) \
            if d.is_dir() else []

    def model_versions(self, name: str) -> list[int]:
        return _versions(self.models_dir / name)

    def model_dir(self, name: str, version: int) -> Path:
        return self.models_dir / name / str(version)

    def resolve_model(self, ref: str) -> tuple[str, int]:
        """``"name"`` (its newest version) or ``"name/version"`` → (name, version) present in the home.

        Raises:
            ValueError: a malformed ref. LookupError: no such model or version.
        """
        name, version = split_ref(ref)
        versions = self.model_versions(name)
        if not versions or (version is not None and version not in versions):
            raise LookupError(f"model {ref!r} is not in {self.models_dir}")
        return name, version if version is not None else versions[-1]

    def model_spec(self, name: str, version: int) -> ModelSpec:
        """Raises: realm_core.model_spec.ModelDirError."""
        return ModelSpec.read(self.model_dir(name, version))

    def model_version(self, ref: str) -> ModelVersion:
        """The model version ``ref`` names (``"name"``: its newest).

        Raises:
            ValueError: a malformed ref. LookupError: not in the home. ModelDirError: a bad model.json.
        """
        name, version = self.resolve_model(ref)
        return ModelVersion(name, version, self.model_dir(name, version), self.model_spec(name, version))

    def new_model_staging(self, name: str) -> Scratch:
        """A fresh hidden directory beside the versions of model ``name`` (renamed into place when complete),
        held alive by a lock (:class:`Scratch`) like an index's staging."""
        return _new_scratch(self.models_dir / check_name(name), ".staging-")

    # --- indexes
    @property
    def indexes_dir(self) -> Path:
        return self.root / "indexes"

    def index_names(self) -> list[str]:
        d = self.indexes_dir
        return sorted(p.name for p in d.iterdir() if NAME_RE.fullmatch(p.name) and p.is_dir()) if d.is_dir() else []

    def index_versions(self, name: str) -> list[int]:
        return _versions(self.indexes_dir / name)

    def index_parent(self, name: str) -> Path:
        """``indexes/<name>``: the versions of one index, its staging and work directories."""
        return self.indexes_dir / check_name(name, "index name")

    def index_dir(self, name: str, version: int) -> Path:
        return self.index_parent(name) / str(version)

    def new_scratch(self, index: str, kind: str) -> Scratch:
        """A fresh hidden directory beside the versions of ``index`` (readable by all), ``kind`` ``"staging"``
        (a version being written) or ``"work"`` (a build's chunk files), held alive by a lock (:class:`Scratch`)."""
        assert kind in ("staging", "work")
        return _new_scratch(self.index_parent(index), f".{kind}-")

    def work_dir(self, index: str, key: str) -> Path:
        """The hidden, resumable work directory of build job ``key``: ``indexes/<index>/.work-<key>``."""
        return self.index_parent(index) / f".work-{key}"

    def remove_dead_scratch(self, live_job: Callable[[str], bool]) -> list[Path]:
        """Remove the hidden staging and work directories of indexes and models that no live process holds
        (their builder died): a :class:`Scratch` whose lock can be taken, or a job work directory ``.work-<id>``
        of no queued or running job (``live_job(id)`` false: a running job whose worker died is resumed from
        it). Returns what was removed."""
        removed = []
        models = sorted(p for p in self.models_dir.iterdir() if NAME_RE.fullmatch(p.name) and p.is_dir()) \
            if self.models_dir.is_dir() else []
        for parent in [self.index_parent(n) for n in self.index_names()] + models:
            for p in sorted(parent.iterdir()):
                if not (p.name.startswith((".staging-", ".work-")) and p.is_dir()):
                    continue
                lock = p.with_name(p.name + ".lock")
                if lock.exists():
                    fd = os.open(lock, os.O_RDWR)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its builder is alive
                    finally:
                        os.close(fd)
                elif p.name.startswith(".work-") and live_job(p.name[len(".work-"):]):
                    continue
                log.warning("removing %s, left by a build that died", p)
                remove_tree(p)
                lock.unlink(missing_ok=True)
                removed.append(p)
        return removed

    @property
    def pins_path(self) -> Path:
        return self.indexes_dir / ".pins.json"

    # --- jobs
    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"
