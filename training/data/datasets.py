"""Data sets: scikit-learn's embedded digits and any folder-per-class tree.

Each data set is a list of samples (an image source and a class index) behind one ``ImageDataset``.
The mask-competition layout is read by ``training.data.mask`` into the same samples.
Images are decoded with ``serving.preprocess.decode_image``, so EXIF orientation is applied the same
way as in the service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from serving.preprocess import decode_image
from training.data.labels import MaskLabels

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class Sample:
    """One image: a file path, or pixels already in memory, and its class index.

    ``group`` names the person (or other unit) the image belongs to: the validation split never puts
    two samples of one group on different sides. ``labels`` holds the attribute labels of
    mask-competition images, None for other data sets.
    """

    target: int
    path: Path | None = None
    pixels: np.ndarray | None = None
    group: str | None = None
    labels: MaskLabels | None = None

    def load(self) -> Image.Image:
        if self.pixels is not None:
            return Image.fromarray(self.pixels)
        if self.path is None:
            raise ValueError("a sample needs a path or pixels")
        return decode_image(self.path.read_bytes())


TargetMode = Literal["class", "heads"]


class ImageDataset(Dataset):
    """Samples behind a transform; each item is ``(image, target)``.

    With ``target_mode="class"`` the target is the class index. With ``"heads"`` it is a dict of
    the class and every attribute label (``class``, ``mask``, ``gender``, ``age_group``, ``age``),
    which the default collate turns into a dict of tensors; every sample then needs ``labels``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable | None = None,
        target_mode: TargetMode = "class",
    ):
        if target_mode not in ("class", "heads"):
            raise ValueError(f"target_mode must be 'class' or 'heads', got {target_mode!r}")
        self.samples = list(samples)
        self.transform = transform
        self.target_mode = target_mode
        if target_mode == "heads":
            unlabeled = sum(sample.labels is None for sample in self.samples)
            if unlabeled:
                raise ValueError(
                    f"target_mode 'heads' needs attribute labels, but {unlabeled} of "
                    f"{len(self.samples)} samples have none; only the mask data set has them"
                )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = sample.load()
        if self.transform is not None:
            image = self.transform(image)
        if self.target_mode == "heads":
            return image, sample.labels.as_targets()
        return image, sample.target

    @property
    def targets(self) -> list[int]:
        return [sample.target for sample in self.samples]


def digits_to_uint8(images: np.ndarray) -> np.ndarray:
    """Scale scikit-learn's digit intensities (integers 0..16) to uint8 0..255."""
    return np.round(images.astype(np.float64) * 255.0 / 16.0).astype(np.uint8)


def load_digits_samples() -> tuple[list[Sample], list[str]]:
    """Return the 1,797 digit scans as 8x8 uint8 samples, with class names '0'..'9'."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = digits_to_uint8(bunch.images)
    samples = [Sample(target=int(t), pixels=p) for p, t in zip(pixels, bunch.target, strict=True)]
    return samples, [str(name) for name in bunch.target_names]


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def load_folder_samples(root: Path) -> tuple[list[Sample], list[str]]:
    """Read ``root/<class name>/<image>``; class indices follow the sorted folder names.

    Hidden files and folders (names starting with '.') are skipped; any other file whose suffix is
    not an image suffix is an error, since dropping it silently would hide a broken data set.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p))
    if len(class_dirs) < 2:
        raise ValueError(f"{root} needs at least 2 class folders, found {len(class_dirs)}")
    class_names = [p.name for p in class_dirs]
    samples: list[Sample] = []
    unknown: list[Path] = []
    for target, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not is_hidden(p))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        unknown += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            raise ValueError(f"class folder {class_dir} has no images")
        samples += [Sample(target=target, path=path) for path in images]
    if unknown:
        shown = ", ".join(str(p) for p in unknown[:5])
        raise ValueError(
            f"{len(unknown)} files under {root} are not images (allowed suffixes: "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}): {shown}"
        )
    return samples, class_names
