"""Data loading: data sets, the validation split and transforms."""

from __future__ import annotations

from dataclasses import dataclass

from training.config import Config
from training.data.datasets import (
    ImageDataset,
    Sample,
    TargetMode,
    load_digits_samples,
    load_folder_samples,
)
from training.data.mask import load_mask_samples
from training.data.split import split_samples
from training.data.transforms import build_eval_transform, build_train_transform

__all__ = ["DataBundle", "build_data", "load_samples", "split_samples"]


@dataclass
class DataBundle:
    train: ImageDataset
    val: ImageDataset
    class_names: list[str]


def load_samples(config: Config) -> tuple[list[Sample], list[str]]:
    data = config.data
    if data.dataset == "digits":
        return load_digits_samples()
    if data.dataset == "folder":
        return load_folder_samples(data.root)
    if data.dataset == "mask":
        return load_mask_samples(data.root, data.age_cutoffs, data.skip_invalid_folders)
    raise ValueError(f"unknown data.dataset {data.dataset!r}; allowed: digits, folder, mask")


def build_data(config: Config, target_mode: TargetMode = "class") -> DataBundle:
    """Load, split and wrap the configured data set.

    ``target_mode="heads"`` makes every item's target a dict of the class and the attribute labels
    (mask data only); see ``ImageDataset``.
    """
    samples, class_names = load_samples(config)
    train_samples, val_samples = split_samples(samples, config.data.val_fraction, config.seed)
    return DataBundle(
        train=ImageDataset(train_samples, build_train_transform(config.data, config.augment), target_mode),
        val=ImageDataset(val_samples, build_eval_transform(config.data), target_mode),
        class_names=class_names,
    )
