"""Pins: which index version each model version serves, recorded in the home so that it survives a restart.

The pins file (:attr:`index.home.Home.pins_path`) is a JSON object ``{"<model name>/<version>": "<index
name>/<version>"}``. Activation and rollback write it (:func:`set_pins`: read, change, write atomically, all
under an exclusive ``fcntl.flock`` on a lock file beside it, so two writers never lose each other's pins);
the service's start and its polling read it (:func:`read_pins`). An unreadable pins file is reported and
treated as empty, never fatal.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from index.home import Home, split_ref
from realm_core.atomic import write_atomic

log = logging.getLogger(__name__)


def _valid(d: object) -> dict[str, str]:
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    out = {}
    for k, v in d.items():
        if not (isinstance(k, str) and isinstance(v, str)) or split_ref(k)[1] is None or split_ref(v)[1] is None:
            raise ValueError(f"pin {k!r}: {v!r} is not model name/version: index name/version")
        out[k] = v
    return out


def read_pins(home: Home) -> dict[str, str]:
    """Model ref → pinned index ref; {} when there is no pins file or it cannot be read (logged)."""
    try:
        return _valid(json.loads(home.pins_path.read_bytes().decode("utf-8")))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        log.warning("pins file %s cannot be read, ignoring it: %s", home.pins_path, e)
        return {}


@contextmanager
def _locked(home: Home) -> Iterator[None]:
    home.indexes_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(home.pins_path.with_name(".pins.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def set_pins(home: Home, pins: dict[str, str]) -> dict[str, str]:
    """Record ``model ref → index ref`` pins (others kept); returns all pins.

    Raises:
        OSError: the pins file cannot be written.
    """
    with _locked(home):
        current = read_pins(home)
        if all(current.get(k) == v for k, v in pins.items()):
            return current
        current.update(pins)
        write_atomic(home.pins_path, json.dumps(current, indent=2, sort_keys=True) + "\n")
        return current
