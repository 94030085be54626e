"""Reader of the mask-competition layout: ``<root>/images/<id>_<gender>_<race>_<age>/<image>``.

A complete person folder contains seven images, ``mask1``..``mask5``, ``incorrect_mask`` and ``normal``,
with any image suffix in any case (``.jpg``, ``.jpeg``, ``.png`` are common, mixed within a folder).
The folder, not the id, identifies a person: ids are strings, some carry a suffix (``000600-1``) and
one id can name two people. Labels come from the folder name.

Entries whose name starts with '.' (``._mask1.jpg``, ``.DS_Store``) are skipped. Missing and extra
files and stray files at the root are logged as one warning per kind with counts, never an error.
A folder name that does not parse is an error that lists the first offenders, unless
``skip_invalid_folders`` is set, which skips them with a warning. An optional ``<root>/train.csv``
(``id,gender,race,age,path``) is compared with the folders and disagreements are logged, but the
folder names stay the source of the labels.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from training.data.datasets import IMAGE_SUFFIXES, Sample, is_hidden
from training.data.labels import (
    DEFAULT_AGE_CUTOFFS,
    GENDER_NAMES,
    MASK_BY_STEM,
    MaskLabels,
    age_to_group,
    class_names,
)

logger = logging.getLogger(__name__)

FOLDER_PATTERN = re.compile(
    r"(?P<person_id>[^_]+)_(?P<gender>male|female)_(?P<race>[^_]+)_(?P<age>\d+)", re.IGNORECASE
)
FOLDER_FORMAT = "<id>_<male|female>_<race>_<age>, e.g. 000001_female_Asian_45"
CSV_COLUMNS = ("id", "gender", "race", "age", "path")
# How many offending names an error or warning lists before it only counts.
MAX_SHOWN = 5


@dataclass(frozen=True)
class Person:
    """One person folder and the labels parsed from its name."""

    folder: Path
    person_id: str
    gender: int
    race: str
    age: int

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass
class LayoutReport:
    """Problems found while reading a tree; each kind is logged as one warning."""

    missing: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, list[str]] = field(default_factory=dict)
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    stray: list[str] = field(default_factory=list)

    def log(self, images_dir: Path, num_people: int) -> None:
        if self.missing:
            logger.warning(
                "%d of %d person folders under %s lack some of the seven images (%d missing in all); "
                "first: %s",
                len(self.missing),
                num_people,
                images_dir,
                sum(len(stems) for stems in self.missing.values()),
                describe(self.missing),
            )
        if self.extra:
            logger.warning(
                "skipped %d extra files in %d person folders under %s: not an image named %s; first: %s",
                sum(len(names) for names in self.extra.values()),
                len(self.extra),
                images_dir,
                ", ".join(MASK_BY_STEM),
                describe(self.extra),
            )
        if self.duplicates:
            logger.warning(
                "%d person folders under %s contain more than one file for the same image name "
                "(all of them are used); first: %s",
                len(self.duplicates),
                images_dir,
                describe(self.duplicates),
            )
        if self.stray:
            logger.warning(
                "skipped %d files at %s that are not person folders; first: %s",
                len(self.stray),
                images_dir,
                first(self.stray),
            )


def first(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_SHOWN])
    return shown if len(names) <= MAX_SHOWN else f"{shown}, ..."


def describe(problems: dict[str, list[str]]) -> str:
    return first([f"{folder} ({', '.join(names)})" for folder, names in problems.items()])


def parse_folder_name(name: str) -> tuple[str, int, str, int] | None:
    """Return ``(person_id, gender, race, age)`` from a person folder name, None when it does not parse."""
    match = FOLDER_PATTERN.fullmatch(name)
    if match is None:
        return None
    gender = GENDER_NAMES.index(match["gender"].lower())
    return match["person_id"], gender, match["race"], int(match["age"])


def find_people(images_dir: Path, report: LayoutReport, skip_invalid_folders: bool = False) -> list[Person]:
    """Return the person folders in name order; raise on unparsable names unless skipping them."""
    people: list[Person] = []
    invalid: list[str] = []
    for entry in sorted(images_dir.iterdir()):
        if is_hidden(entry):
            continue
        if not entry.is_dir():
            report.stray.append(entry.name)
            continue
        parsed = parse_folder_name(entry.name)
        if parsed is None:
            invalid.append(entry.name)
            continue
        people.append(Person(entry, *parsed))
    if invalid and not skip_invalid_folders:
        raise ValueError(
            f"{len(invalid)} folders under {images_dir} do not match {FOLDER_FORMAT}: {first(invalid)}; "
            "rename them, or set data.skip_invalid_folders=true to skip them"
        )
    if invalid:
        logger.warning(
            "skipped %d folders under %s whose names do not match %s (data.skip_invalid_folders is "
            "true); first: %s",
            len(invalid),
            images_dir,
            FOLDER_FORMAT,
            first(invalid),
        )
    return people


def read_person_images(person: Person, report: LayoutReport) -> list[tuple[Path, int]]:
    """Return ``(path, mask label)`` for each image of one person, in ``mask1``..``normal`` order."""
    found: dict[str, list[Path]] = {}
    for path in sorted(person.folder.iterdir()):
        if is_hidden(path):
            continue
        stem = path.stem.lower()
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES or stem not in MASK_BY_STEM:
            report.extra.setdefault(person.name, []).append(path.name)
            continue
        found.setdefault(stem, []).append(path)

    missing = [stem for stem in MASK_BY_STEM if stem not in found]
    if missing:
        report.missing[person.name] = missing
    duplicates = [stem for stem, paths in found.items() if len(paths) > 1]
    if duplicates:
        report.duplicates[person.name] = duplicates
    return [(path, MASK_BY_STEM[stem]) for stem in MASK_BY_STEM for path in found.get(stem, [])]


def resolve_images_dir(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"{images_dir} not found; for the mask data set, data.root is the folder that contains "
            "images/<id>_<gender>_<race>_<age>/ (the competition's train/ folder)"
        )
    return images_dir


def load_mask_samples(
    root: Path,
    age_cutoffs: tuple[int, int] = DEFAULT_AGE_CUTOFFS,
    skip_invalid_folders: bool = False,
) -> tuple[list[Sample], list[str]]:
    """Read ``root/images/<person>/<image>`` into samples grouped by person, with the 18 class names."""
    images_dir = resolve_images_dir(root)
    report = LayoutReport()
    people = find_people(images_dir, report, skip_invalid_folders)
    if not people:
        raise ValueError(f"no person folders ({FOLDER_FORMAT}) under {images_dir}")

    samples: list[Sample] = []
    for person in people:
        age_group = age_to_group(person.age, age_cutoffs)
        for path, mask in read_person_images(person, report):
            labels = MaskLabels(mask, person.gender, age_group, person.age, person.person_id)
            samples.append(Sample(target=labels.target, path=path, group=person.name, labels=labels))
    report.log(images_dir, len(people))
    if not samples:
        raise ValueError(f"the {len(people)} person folders under {images_dir} contain no images")

    shared = sorted(pid for pid, count in Counter(p.person_id for p in people).items() if count > 1)
    if shared:
        logger.info(
            "%d ids name more than one person folder; each folder is a separate person: %s",
            len(shared),
            first(shared),
        )
    csv_path = Path(root) / "train.csv"
    if csv_path.is_file():
        compare_train_csv(csv_path, people)
    logger.info("mask data: %d images of %d people from %s", len(samples), len(people), images_dir)
    return samples, class_names(age_cutoffs)


def read_train_csv(csv_path: Path) -> list[dict[str, str | None]]:
    # utf-8-sig drops the byte order mark that spreadsheet programs write.
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        absent = [name for name in CSV_COLUMNS if name not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(
                f"{csv_path} lacks the columns {', '.join(absent)}; expected the header "
                f"{','.join(CSV_COLUMNS)}"
            )
        return list(reader)


def cell(row: dict[str, str | None], column: str) -> str:
    # csv.DictReader fills the columns of a short row with None.
    return (row.get(column) or "").strip()


def row_matches(row: dict[str, str | None], person: Person) -> bool:
    age = cell(row, "age")
    return (
        cell(row, "id") == person.person_id
        and cell(row, "gender").lower() == GENDER_NAMES[person.gender]
        and age.isdigit()
        and int(age) == person.age
    )


def compare_train_csv(csv_path: Path, people: list[Person]) -> None:
    """Log rows of ``train.csv`` that name no folder or disagree with it, and folders it does not list."""
    by_name = {person.name: person for person in people}
    listed: set[str] = set()
    no_folder: list[str] = []
    disagree: list[str] = []
    # Line 1 is the header.
    for line, row in enumerate(read_train_csv(csv_path), start=2):
        name = cell(row, "path")
        listed.add(name)
        person = by_name.get(name)
        if person is None:
            no_folder.append(name or f"line {line}")
        elif not row_matches(row, person):
            disagree.append(f"line {line}: {name}")
    unlisted = [name for name in by_name if name not in listed]
    if no_folder:
        logger.warning(
            "%d rows of %s name no person folder that was read; first: %s",
            len(no_folder),
            csv_path,
            first(no_folder),
        )
    if disagree:
        logger.warning(
            "%d rows of %s disagree with their folder name on id, gender or age (the folder name is "
            "used); first: %s",
            len(disagree),
            csv_path,
            first(disagree),
        )
    if unlisted:
        logger.warning(
            "%d person folders are not listed in %s; first: %s", len(unlisted), csv_path, first(unlisted)
        )
