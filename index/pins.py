"""Pins: which index version serves each block embedder, recorded in the home so that it survives a restart.

An index version's contents depend on the block embedder that built it, not on the reader, and activation swaps
an index in under every served model with that block embedder; so a pin is keyed by the block embedder's content
id (:func:`pin_key`: ``"embedder:<sha256>"``), and a new model version with the same block embedder (a reader-only
update) serves the version pinned before it, a rolled-back one included. The pins file
(:attr:`index.home.Home.pins_path`) is a JSON object ``{"embedder:<sha256>" | "<model name>/<version>":
"<index name>/<version>"}``; a model ref key (pins files before embedder keys, or a model whose block embedder
id is unknown) is read when the model's embedder has no pin (:func:`pin_for`). Activation and rollback write it
(:func:`set_pins`: read, change, write atomically, all under an exclusive ``fcntl.flock`` on a lock file beside
it, so two writers never lose each other's pins); the service's start and its polling read it
(:func:`read_pins`). An unreadable pins file is reported and treated as empty, never fatal.
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


EMBEDDER = "embedder:"


def pin_key(model_ref: str, embedder_id: str) -> str:
    """The key a model version's pin is written under: its block embedder's (the model ref where unknown)."""
    return EMBEDDER + embedder_id if embedder_id else model_ref


def pin_for(pins: dict[str, str], model_ref: str, embedder_id: str) -> str | None:
    """The index ref pinned for a model version: its block embedder's pin, else one under its model ref."""
    return pins.get(EMBEDDER + embedder_id) if embedder_id and EMBEDDER + embedder_id in pins else pins.get(model_ref)


def _valid_key(k: object) -> bool:
    if not isinstance(k, str):
        return False
    if k.startswith(EMBEDDER):
        return len(k) > len(EMBEDDER) and all(c in "0123456789abcdef" for c in k[len(EMBEDDER):])
    return split_ref(k)[1] is not None


def _valid(d: object) -> dict[str, str]:
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    out = {}
    for k, v in d.items():
        if not (_valid_key(k) and isinstance(v, str)) or split_ref(v)[1] is None:
            raise ValueError(f"pin {k!r}: {v!r} is not embedder:<sha256> or model name/version: index name/version")
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
    """Record pins (:func:`pin_key` → index ref; others kept); returns all pins.

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
