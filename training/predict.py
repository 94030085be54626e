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

from training.data.datasets import IMAGE_SUFFIXES, ImageDataset, Sample
from training.data.transforms import build_eval_transform
from training.engine import predict_logits
from training.export import load_model_from_checkpoint

logger = logging.getLogger(__name__)

# How many missing or invalid image ids an error lists before it only counts.
MAX_SHOWN = 5


def list_images(root: Path) -> list[Path]:
    """Every image file under ``root`` in sorted order, hidden files skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


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


def read_image_ids(info: Path) -> list[str]:
    """Return the ``ImageID`` column of a submission template, in row order."""
    if not info.is_file():
        raise FileNotFoundError(f"info file not found: {info}")
    # utf-8-sig drops the byte order mark that spreadsheet programs write.
    with info.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if "ImageID" not in (reader.fieldnames or []):
            raise ValueError(f"{info} has no ImageID column; expected the header ImageID,ans")
        image_ids = [(row["ImageID"] or "").strip() for row in reader]
    if not image_ids:
        raise ValueError(f"{info} lists no images")
    return image_ids


def resolve_image_paths(image_ids: list[str], images: Path) -> list[Path]:
    """Map each id to ``images/<id>``; raise with the first offenders when any is invalid or missing."""
    invalid = [i for i in image_ids if not i or Path(i).is_absolute() or ".." in Path(i).parts]
    if invalid:
        raise ValueError(f"{len(invalid)} ImageID values are empty or leave {images}: {invalid[:MAX_SHOWN]}")
    paths = [images / image_id for image_id in image_ids]
    missing = [i for i, path in zip(image_ids, paths, strict=True) if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images listed in the info file are not in {images}; "
            f"first: {missing[:MAX_SHOWN]}"
        )
    return paths


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
