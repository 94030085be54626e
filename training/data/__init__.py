"""Data loading: data sets, the validation split and transforms."""

from __future__ import annotations

from dataclasses import dataclass

from sklearn.model_selection import train_test_split

from training.config import Config
from training.data.datasets import ImageDataset, Sample, load_digits_samples, load_folder_samples
from training.data.transforms import build_eval_transform, build_train_transform


@dataclass
class DataBundle:
    train: ImageDataset
    val: ImageDataset
    class_names: list[str]


def split_samples(
    samples: list[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split stratified by class, without replacement, reproducible by seed."""
    targets = [sample.target for sample in samples]
    train_idx, val_idx = train_test_split(
        list(range(len(samples))), test_size=val_fraction, stratify=targets, random_state=seed
    )
    return [samples[i] for i in sorted(train_idx)], [samples[i] for i in sorted(val_idx)]


def load_samples(config: Config) -> tuple[list[Sample], list[str]]:
    data = config.data
    if data.dataset == "digits":
        return load_digits_samples()
    if data.dataset == "folder":
        return load_folder_samples(data.root)
    raise ValueError(f"unknown data.dataset {data.dataset!r}; allowed: digits, folder")


def build_data(config: Config) -> DataBundle:
    samples, class_names = load_samples(config)
    train_samples, val_samples = split_samples(samples, config.data.val_fraction, config.seed)
    return DataBundle(
        train=ImageDataset(train_samples, build_train_transform(config.data, config.augment)),
        val=ImageDataset(val_samples, build_eval_transform(config.data)),
        class_names=class_names,
    )
