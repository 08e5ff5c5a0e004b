"""Atomic file writes: a temporary file beside the target, fsync, ``os.replace``, fsync of the directory.

A reader sees the old file or the new one, never half of either (also after a crash).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(path: str | Path, write: Callable[[str], object], mode: int = 0o644) -> None:
    """Publish ``path`` atomically: ``write(tmp)`` fills a temporary name beside it, which then gets ``mode``
    (after writing: writers such as safetensors replace the file, and mkstemp makes it private), is fsynced and
    renamed onto ``path``; the directory is fsynced. The temporary is removed on any error.

    Raises:
        OSError: the directory is missing or not writable; whatever ``write`` raises.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically (:func:`publish_file`).

    Raises:
        OSError: the directory is missing or not writable.
    """
    publish_file(path, lambda tmp: Path(tmp).write_bytes(data.encode("utf-8") if isinstance(data, str) else data),
                 mode)


def new_scratch(parent: Path, prefix: str) -> Scratch:
    """A fresh hidden directory ``parent/<prefix>XXXX`` (mode 0755) held alive by a :class:`Scratch` lock."""
    parent.mkdir(parents=True, exist_ok=True)
    fd, lock = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=".lock")
    fcntl.flock(fd, fcntl.LOCK_EX)  # before the directory exists: a cleaner never sees it unlocked
    path = Path(lock[: -len(".lock")])
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    return Scratch(path, fd)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class Scratch:
    """A hidden directory this process writes, with the ``flock`` on ``<path>.lock`` that tells
    :meth:`index.home.Home.remove_dead_scratch` its builder is alive (the kernel drops it when the process dies)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        """Remove the directory (if it was not renamed into place meanwhile) and its lock."""
        if self._fd < 0:
            return
        remove_tree(self.path)
        self.path.with_name(self.path.name + ".lock").unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1
