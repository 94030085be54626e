from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import ConfigError, load_config
from training.data import build_data, split_samples
from training.data.datasets import digits_to_uint8, load_digits_samples, load_folder_samples
from training.data.transforms import build_eval_transform, build_train_transform


def test_digits_scaled_to_uint8():
    pixels = digits_to_uint8(np.array([[0.0, 8.0, 16.0]]))
    assert pixels.dtype == np.uint8
    assert pixels.tolist() == [[0, 128, 255]]


def test_split_is_disjoint_and_complete():
    samples, _ = load_digits_samples()
    train, val = split_samples(samples, 0.2, seed=0)
    train_ids = {id(s) for s in train}
    val_ids = {id(s) for s in val}
    assert not train_ids & val_ids
    assert len(train_ids | val_ids) == len(samples)


def test_split_is_stratified():
    samples, _ = load_digits_samples()
    _, val = split_samples(samples, 0.2, seed=0)
    counts = Counter(s.target for s in val)
    assert min(counts.values()) >= 34
    assert max(counts.values()) <= 38


@pytest.mark.parametrize("seed", [0, 7])
def test_split_reproducible_by_seed(seed):
    samples, _ = load_digits_samples()
    first = [id(s) for s in split_samples(samples, 0.2, seed)[1]]
    second = [id(s) for s in split_samples(samples, 0.2, seed)[1]]
    assert first == second


def test_different_seeds_differ():
    samples, _ = load_digits_samples()
    assert split_samples(samples, 0.2, 0)[1] != split_samples(samples, 0.2, 1)[1]


def test_eval_transform_shape_and_range():
    config = load_config(None, ["data.image_size=24"])
    data = build_data(config)
    image, target = data.val[0]
    assert image.shape == (1, 24, 24)
    assert image.min() >= -1.0
    assert image.max() <= 1.0
    assert 0 <= target < 10


def make_folder_tree(root, classes=("cat", "dog"), per_class=3):
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            Image.new("RGB", (10, 12), (index * 40, 0, 0)).save(folder / f"{index}.png")
    return root


def test_folder_dataset_reads_classes(tmp_path):
    root = make_folder_tree(tmp_path / "data")
    (root / "cat" / ".hidden.png").write_bytes(b"not an image")
    samples, class_names = load_folder_samples(root)
    assert class_names == ["cat", "dog"]
    assert len(samples) == 6


def test_folder_dataset_rejects_stray_file(tmp_path):
    root = make_folder_tree(tmp_path / "data")
    (root / "dog" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt"):
        load_folder_samples(root)


def test_folder_dataset_rejects_empty_class(tmp_path):
    root = make_folder_tree(tmp_path / "data")
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_folder_samples(root)


def test_eval_transform_deterministic():
    config = load_config(None, ["data.image_size=16", "augment.hflip=1.0", "augment.color_jitter=0.5"])
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    transform = build_eval_transform(config.data)
    assert torch.equal(transform(image), transform(image))


def test_train_transform_hflip():
    config = load_config(None, ["data.image_size=8", "augment.hflip=1.0"])
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    flipped = build_train_transform(config.data, config.augment)(image)
    assert torch.equal(flipped, build_eval_transform(config.data)(image).flip(-1))


def test_train_transform_crop_size():
    overrides = ["data.image_size=12", "augment.random_resized_crop=true", "augment.crop_scale=[0.3, 0.5]"]
    config = load_config(
        None, [*overrides, "data.color_mode=RGB", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"]
    )
    image = Image.new("RGB", (24, 32), (10, 200, 30))
    assert build_train_transform(config.data, config.augment)(image).shape == (3, 12, 12)


@pytest.mark.parametrize(
    "override",
    ["augment.crop_scale=[0.9, 0.5]", "augment.crop_scale=[0.0, 1.0]", "augment.crop_scale=[0.5, 1.5]",
     "augment.crop_ratio=[1.5, 0.5]", "augment.crop_ratio=[0.0, 1.0]"],
)  # fmt: skip
def test_augment_config_rejects_bad_ranges(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])
