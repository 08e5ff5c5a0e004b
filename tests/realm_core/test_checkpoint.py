"""Atomic publishing of weights and training state (realm_core.atomic.publish_file)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch

from realm_core.atomic import publish_file
from realm_core.checkpoint import load_safetensors, save_safetensors_atomic


def test_published_safetensors_are_readable_by_all_and_round_trip(tmp_path: Path) -> None:
    """Regression: the mode was set before safetensors replaced the temporary file, so weights came out 0600."""
    path = tmp_path / "w.safetensors"
    save_safetensors_atomic({"a": torch.arange(6.0).view(2, 3)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert torch.equal(load_safetensors(path)["a"], torch.arange(6.0).view(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    path.write_bytes(b"old")

    def fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_file(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
