"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain Python data (the config as a dict, class names as a list),
so it loads without unpickling arbitrary objects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """Raised for a checkpoint file that is missing or cannot be read safely."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, then rename, so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or others for unsafe files
        raise CheckpointError(
            f"{path} cannot be loaded with weights_only=True ({type(exc).__name__}: {exc}). "
            "Only checkpoints of tensors and plain data written by 'python -m training train' are read."
        ) from exc
    for key in ("model", "config", "class_names"):
        if key not in state:
            raise CheckpointError(f"{path} is not a training checkpoint: key {key!r} is missing")
    return state
