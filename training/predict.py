"""Offline prediction with the eager PyTorch model from a checkpoint.

Two outputs: a CSV of ``path,class_id,label,score`` for every image under a folder, or the
competition submission ``ImageID,ans`` for the images listed in ``eval/info.csv``, in its row order.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from serving.predict import list_images as list_files
from serving.predict import read_image_ids, resolve_image_paths
from training.data.datasets import IMAGE_SUFFIXES, ImageDataset, Sample
from training.data.transforms import build_eval_transform
from training.engine import predict_logits
from training.export import load_model_from_checkpoint

logger = logging.getLogger(__name__)


def list_images(root: Path) -> list[Path]:
    """List the files under ``root`` that training can read as images, sorted, hidden ones skipped."""
    return list_files(Path(root), IMAGE_SUFFIXES)


def predict_files(
    checkpoint: Path, paths: list[Path], batch_size: int = 64
) -> tuple[list[int], list[str], torch.Tensor]:
    """Return class ids, class names and softmax probabilities for each file, in order."""
    model, config, class_names, _ = load_model_from_checkpoint(checkpoint)
    dataset = ImageDataset([Sample(target=-1, path=p) for p in paths], build_eval_transform(config.data))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    probabilities = predict_logits(model, loader, torch.device("cpu")).softmax(dim=1)
    class_ids = probabilities.argmax(dim=1).tolist()
    return class_ids, class_names, probabilities


def write_predictions(checkpoint: Path, images: Path, out: Path, batch_size: int = 64) -> Path:
    paths = list_images(images)
    if not paths:
        allowed = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ValueError(f"no images under {images} (allowed suffixes: {allowed})")
    class_ids, class_names, probabilities = predict_files(checkpoint, paths, batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "class_id", "label", "score"])
        for path, class_id, row in zip(paths, class_ids, probabilities, strict=True):
            relative = path.relative_to(images).as_posix()
            writer.writerow([relative, class_id, class_names[class_id], f"{row[class_id]:.6f}"])
    return out


def write_submission(
    checkpoint: Path, info: Path, out: Path, images: Path | None = None, batch_size: int = 64
) -> Path:
    """Write ``ImageID,ans`` for every row of ``info`` in its order; ``ans`` is the class id.

    The images are read from ``images``, by default the ``images`` folder beside ``info``.
    """
    info = Path(info)
    images = Path(images) if images is not None else info.parent / "images"
    image_ids = read_image_ids(info)
    paths = resolve_image_paths(image_ids, images)
    class_ids, _, _ = predict_files(checkpoint, paths, batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageID", "ans"])
        writer.writerows(zip(image_ids, class_ids, strict=True))
    logger.info("wrote %d predictions for %s to %s", len(image_ids), info, out)
    return out


def run_predict(
    checkpoint: Path,
    out: Path,
    images: Path | None = None,
    info: Path | None = None,
    batch_size: int = 64,
) -> Path:
    """Write the submission when ``info`` is given, else the per-file predictions under ``images``."""
    if info is not None:
        return write_submission(checkpoint, info, out, images, batch_size)
    if images is None:
        raise ValueError("predict needs --images DIR (every image under it) or --info CSV (a submission)")
    return write_predictions(checkpoint, images, out, batch_size)
