"""Builder of a small tree in the exact mask-competition layout, with the quirks of the real data.

The tree has hidden files beside the images and at the roots, extensions mixed within folders and
in upper case, a suffixed id (``000600-1``) and one id (``000700``) used by two people.
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

# Twelve people: two per (gender, age group) pair under the default cut-offs (30, 60).
PEOPLE = (
    "000001_male_Asian_20",
    "000002_male_Asian_25",
    "000600-1_male_Asian_45",
    "000004_male_Asian_58",
    "000005_male_Asian_60",
    "000006_male_Asian_60",
    "000007_female_Asian_18",
    "000700_female_Asian_29",
    "000009_female_Asian_30",
    "000010_female_Asian_59",
    "000700_female_Asian_61",
    "000012_female_Asian_60",
)
# Extensions mixed within every folder, some in upper case.
IMAGE_FILES = (
    "mask1.jpg",
    "mask2.JPG",
    "mask3.jpeg",
    "mask4.png",
    "mask5.PNG",
    "incorrect_mask.Jpeg",
    "normal.jpg",
)
IMAGE_SIZE = (24, 32)

# A few seconds on 2 cores: 84 images of 24x32 at 16x16, one epoch of timm's smallest ResNet.
TINY_MASK_OVERRIDES = [
    "model.name=test_resnet",
    "data.image_size=16",
    "data.batch_size=16",
    "data.num_workers=0",
    "train.epochs=1",
    "train.device=cpu",
    "train.log_interval=100",
    "train.tensorboard=false",
    "lr_scheduler.warmup_epochs=0",
]
EVAL_IDS = ("f3a1.jpg", "0b2c.png", "9d4e.jpg", "1a5f.jpeg", "c06d.jpg")


def write_image(path: Path, shade: int) -> None:
    Image.new("RGB", IMAGE_SIZE, (shade, 255 - shade, (shade * 7) % 256)).save(path)


def make_person(images_dir: Path, name: str, files: tuple[str, ...] = IMAGE_FILES) -> Path:
    folder = images_dir / name
    folder.mkdir(parents=True)
    for index, file_name in enumerate(files):
        write_image(folder / file_name, shade=(index * 37 + len(name) * 11) % 256)
    # AppleDouble and Finder files that macOS leaves beside copied images.
    (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07 not an image")
    (folder / ".DS_Store").write_bytes(b"Bud1 not an image")
    return folder


def write_train_csv(train_dir: Path, people: tuple[str, ...]) -> Path:
    path = train_dir / "train.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "gender", "race", "age", "path"])
        for name in people:
            person_id, gender, race, age = name.rsplit("_", 3)
            writer.writerow([person_id, gender, race, age, name])
    return path


def make_eval(root: Path, image_ids: tuple[str, ...] = EVAL_IDS) -> Path:
    """Write ``eval/images/<id>`` and ``eval/info.csv`` with ``ans`` 0; return the info file."""
    images_dir = root / "eval" / "images"
    images_dir.mkdir(parents=True)
    for index, image_id in enumerate(image_ids):
        write_image(images_dir / image_id, shade=index * 50)
    (images_dir / "._f3a1.jpg").write_bytes(b"not an image")
    info = root / "eval" / "info.csv"
    with info.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageID", "ans"])
        writer.writerows([image_id, 0] for image_id in image_ids)
    return info


def make_competition_tree(root: Path, people: tuple[str, ...] = PEOPLE, with_csv: bool = True) -> Path:
    """Write ``root/train/{images,train.csv}`` and ``root/eval``; return ``root/train``."""
    train_dir = root / "train"
    images_dir = train_dir / "images"
    images_dir.mkdir(parents=True)
    for name in people:
        make_person(images_dir, name)
    (images_dir / f"._{people[0]}").write_bytes(b"not a folder")
    (images_dir / ".DS_Store").write_bytes(b"Bud1")
    (train_dir / ".DS_Store").write_bytes(b"Bud1")
    if with_csv:
        write_train_csv(train_dir, people)
    make_eval(root)
    return train_dir
