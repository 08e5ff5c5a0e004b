"""Checkpoint loading: a key map from checkpoint names to ours, with a shape check per tensor.

A missing or unexpected key is an error that names the key. Known buffers or unused heads are named
in ``ignore`` (prefixes) rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from realm_core.atomic import publish_file


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: missing, unexpected or misshapen keys."""


def load_mapped(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    prefix_map: Mapping[str, str],
    ignore: Iterable[str] = (),
) -> None:
    """Copy checkpoint tensors into ``module``.

    Args:
        module: the model to fill; every parameter and persistent buffer must be covered.
        tensors: checkpoint name → tensor.
        prefix_map: checkpoint prefix → our prefix, longest match first ("" maps everything as is).
        ignore: checkpoint key prefixes to skip (unused heads, non-persistent buffers).

    Raises:
        CheckpointError: a key that maps to nothing of ours, one of ours left unfilled, or a shape
            mismatch — each names the key.
    """
    ignore = tuple(ignore)
    ours = module.state_dict()
    prefixes = sorted(prefix_map, key=len, reverse=True)
    filled: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.startswith(ignore) and ignore:
            continue
        src = next((p for p in prefixes if key.startswith(p)), None)
        name = None if src is None else prefix_map[src] + key[len(src):]
        if name is None or name not in ours:
            raise CheckpointError(f"unexpected checkpoint key {key!r}")
        if tuple(t.shape) != tuple(ours[name].shape):
            raise CheckpointError(
                f"checkpoint key {key!r} has shape {tuple(t.shape)}, expected {tuple(ours[name].shape)} for {name!r}"
            )
        filled[name] = t.to(ours[name].dtype)
    missing = [k for k in ours if k not in filled]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        # Name the key as the checkpoint would spell it: the longest mapped prefix of ours, reversed.
        src = max((p for p in prefix_map if missing[0].startswith(prefix_map[p])),
                  key=lambda p: len(prefix_map[p]), default="")
        key = src + missing[0][len(prefix_map.get(src, "")):]
        ours_note = f" (for {missing[0]!r})" if key != missing[0] else ""
        raise CheckpointError(f"checkpoint lacks {key!r}{ours_note}{more}")
    module.load_state_dict(filled, strict=True)


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (memory-mapped by safetensors while read)."""
    return load_file(str(path))


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], path: str | Path,
                            metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically, readable by all (:func:`realm_core.atomic.publish_file`)."""
    publish_file(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                                             metadata=metadata))
