"""Offline batch prediction with the service's engine and preprocessing, with no server and no torch.

    python -m serving.predict --model exports/digits --images DIR --out predictions.csv
    python -m serving.predict --model exports/mask --images eval/info.csv --out submission.csv

With a folder, every image file under it is classified and the CSV has ``path,class_id,label,score``
(paths relative to the folder, sorted). With a competition ``info.csv`` (header ``ImageID,ans``), the
images are read from the ``images`` folder beside it and the output is the submission ``ImageID,ans``
with the predicted class id, in the rows' order. Images are decoded with ``serving.preprocess`` and
classified with ``serving.engine.OnnxClassifier``, as the service does. A file that cannot be
decoded stops the run with an error that lists every such file; nothing is written then.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from serving.engine import OnnxClassifier, TopClass
from serving.preprocess import ImageDecodeError, load_array

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".avif", ".mpo"}
)
# How many invalid, missing or undecodable files an error lists before it only counts them.
MAX_SHOWN = 5


def list_images(root: Path, suffixes: frozenset[str] = IMAGE_SUFFIXES) -> list[Path]:
    """List the files under ``root`` whose suffix is in ``suffixes``, sorted, hidden ones skipped."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and path.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


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
    """Map each id to ``images/<id>``; raise naming the first offenders when any is invalid or missing."""
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


def _batches(paths: list[Path], batch_size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), batch_size):
        yield paths[start : start + batch_size]


def predict_paths(
    classifier: OnnxClassifier,
    paths: list[Path],
    batch_size: int = 64,
    workers: int = 4,
    progress: bool = True,
) -> list[TopClass]:
    """Return the top class of each file, in order; raise listing every file that cannot be decoded."""
    from tqdm import tqdm

    def decode(path: Path) -> np.ndarray | str:
        try:
            return load_array(path, classifier.spec)
        except ImageDecodeError as exc:
            return f"{path}: {exc}"

    results: list[TopClass] = []
    failures: list[str] = []
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(paths), unit="image", disable=not progress, file=sys.stderr) as bar,
    ):
        for batch in _batches(paths, batch_size):
            decoded = list(pool.map(decode, batch))
            failures += [item for item in decoded if isinstance(item, str)]
            arrays = [item for item in decoded if not isinstance(item, str)]
            if arrays and not failures:
                results += [row[0] for row in classifier.predict_arrays(arrays, k=1)]
            bar.update(len(batch))
    if failures:
        shown = "\n  ".join(failures[:MAX_SHOWN])
        raise ValueError(f"{len(failures)} of {len(paths)} files could not be decoded; first:\n  {shown}")
    return results


def write_csv(out: Path, header: list[str], rows: list[list]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return out


def run(
    model: Path, images: Path, out: Path, batch_size: int = 64, workers: int = 4, progress: bool = True
) -> Path:
    """Classify a folder or the images of an ``info.csv`` and write the CSV described in the module."""
    classifier = OnnxClassifier(model)
    logger.info(
        "model %s version %s on %s",
        classifier.manifest.name,
        classifier.manifest.version,
        classifier.session.providers,
    )
    if images.is_file():
        image_ids = read_image_ids(images)
        paths = resolve_image_paths(image_ids, images.parent / "images")
        top = predict_paths(classifier, paths, batch_size, workers, progress)
        rows = [[image_id, entry.class_id] for image_id, entry in zip(image_ids, top, strict=True)]
        return write_csv(out, ["ImageID", "ans"], rows)
    paths = list_images(images)
    if not paths:
        raise ValueError(f"no images under {images} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    top = predict_paths(classifier, paths, batch_size, workers, progress)
    rows = [
        [path.relative_to(images).as_posix(), entry.class_id, entry.label, f"{entry.score:.6f}"]
        for path, entry in zip(paths, top, strict=True)
    ]
    return write_csv(out, ["path", "class_id", "label", "score"], rows)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.predict", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="export folder (a version folder or its parent)"
    )
    parser.add_argument(
        "--images", type=Path, required=True, help="folder of images, or a competition info.csv (ImageID,ans)"
    )
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="images per onnxruntime call")
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=min(4, os.cpu_count() or 1),
        help="threads that decode images",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = run(args.model, args.images, args.out, args.batch_size, args.workers, not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 1
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
