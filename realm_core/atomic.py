"""Atomic file writes: a temporary file beside the target, fsync, ``os.replace``, fsync of the directory.

A reader sees the old file or the new one, never half of either (also after a crash).
"""

from __future__ import annotations

import os
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
