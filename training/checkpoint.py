"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain Python data (the config as a dict, class names as a list,
random number generator states as tensors, lists and tuples), so it loads without unpickling
arbitrary objects. A file that needs pickle is rejected, never loaded again with ``weights_only=False``.

Keys written by ``python -m training train``: ``model``, ``optimizer``, ``lr_scheduler``,
``grad_scaler``, ``epoch``, ``step`` (optimizer steps so far), ``rng_states`` (one entry per process),
``config``, ``class_names``, ``metrics`` (validation scalars of that epoch), ``monitor`` and
``best_score``. Only ``model``, ``config`` and ``class_names`` are required to read a checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "config", "class_names")
RESUME_KEYS = ("optimizer", "epoch", "step", "rng_states")


class CheckpointError(ValueError):
    """Raised for a checkpoint file that is missing or cannot be read safely."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename it over ``path``.

    The rename is atomic on POSIX file systems, so a reader or a kill at any moment finds either the
    previous file or the complete new one, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates the file readable by its owner only; a checkpoint is an ordinary output.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(folder: Path) -> None:
    """Flush the rename to disk, where the platform allows opening a folder."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        logger.debug("cannot open %s to fsync it: %s", folder, exc)
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a training checkpoint: it contains a {type(state).__name__}")
    for key in REQUIRED_KEYS:
        if key not in state:
            raise CheckpointError(f"{path} is not a training checkpoint: key {key!r} is missing")
    return state


def check_resumable(state: dict[str, Any], path: Path) -> None:
    """Raise CheckpointError when ``state`` lacks what ``--resume`` needs."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} cannot be resumed: keys {missing} are missing; "
            "resume from a last.pt or best.pt written by 'python -m training train'"
        )


def capture_rng_state() -> dict[str, Any]:
    """Return the Python, NumPy, torch CPU and CUDA generator states as plain data."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by ``capture_rng_state``."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    saved = state["numpy"]
    np.random.set_state(
        (
            saved["name"],
            saved["keys"].numpy().astype(np.uint32),
            saved["position"],
            saved["has_gauss"],
            saved["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            logger.warning(
                "checkpoint has CUDA generator states for %d devices, this machine has %d; "
                "CUDA random numbers will differ from the original run",
                len(cuda_states),
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
