import itertools
import logging
import shutil

import pytest
import torch
from mask_tree import IMAGE_FILES, PEOPLE, make_competition_tree, make_person, write_image
from PIL import Image
from torch.utils.data import DataLoader

from training.config import ConfigError, load_config
from training.data import build_data
from training.data.datasets import ImageDataset, load_digits_samples
from training.data.labels import (
    age_to_group,
    class_names,
    decode_class,
    encode_class,
)
from training.data.mask import MAX_SHOWN, load_mask_samples, parse_folder_name

MASK_LOGGER = "training.data.mask"


@pytest.fixture
def train_dir(tmp_path):
    return make_competition_tree(tmp_path / "data")


def samples_by_name(samples):
    return {f"{s.group}/{s.path.name}": s for s in samples}


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == MASK_LOGGER and r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("mask", "gender", "age_group"), list(itertools.product(range(3), range(2), range(3)))
)
def test_encode_class_formula(mask, gender, age_group):
    class_id = encode_class(mask, gender, age_group)
    assert class_id == mask * 6 + gender * 3 + age_group
    assert decode_class(class_id) == (mask, gender, age_group)


def test_encode_class_covers_all_18():
    ids = {encode_class(*labels) for labels in itertools.product(range(3), range(2), range(3))}
    assert ids == set(range(18))


@pytest.mark.parametrize(("mask", "gender", "age_group"), [(3, 0, 0), (0, 2, 0), (0, 0, 3), (-1, 0, 0)])
def test_encode_class_rejects_out_of_range(mask, gender, age_group):
    with pytest.raises(ValueError, match="must be in"):
        encode_class(mask, gender, age_group)


@pytest.mark.parametrize("class_id", [-1, 18])
def test_decode_class_rejects_out_of_range(class_id):
    with pytest.raises(ValueError, match="0..17"):
        decode_class(class_id)


@pytest.mark.parametrize(
    ("age", "cutoffs", "group"),
    [
        (0, (30, 60), 0),
        (29, (30, 60), 0),
        (30, (30, 60), 1),
        (59, (30, 60), 1),
        (60, (30, 60), 2),
        (90, (30, 60), 2),
        (57, (30, 58), 1),
        (58, (30, 58), 2),
        (24, (25, 50), 0),
        (25, (25, 50), 1),
    ],
)
def test_age_to_group_cutoffs(age, cutoffs, group):
    assert age_to_group(age, cutoffs) == group


@pytest.mark.parametrize("cutoffs", [(60, 30), (30, 30), (0, 60)])
def test_age_to_group_rejects_bad_cutoffs(cutoffs):
    with pytest.raises(ValueError, match="cut-offs"):
        age_to_group(40, cutoffs)


@pytest.mark.parametrize("cutoffs", [[60, 30], [30, 30], [0, 60]])
def test_config_rejects_bad_age_cutoffs(cutoffs):
    with pytest.raises(ConfigError, match="age_cutoffs"):
        load_config(None, [f"data.age_cutoffs={cutoffs}"])


def test_config_mask_needs_root():
    with pytest.raises(ConfigError, match="data.root is required"):
        load_config("configs/mask.yaml")


def test_class_names_order():
    names = class_names((30, 60))
    assert len(names) == 18
    assert names[0] == "wear/male/<30"
    assert names[encode_class(1, 1, 1)] == "incorrect/female/30-59"
    assert names[17] == "not_worn/female/>=60"


def test_class_names_follow_cutoffs():
    assert class_names((30, 58))[1] == "wear/male/30-57"
    assert class_names((30, 58))[2] == "wear/male/>=58"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("000001_female_Asian_45", ("000001", 1, "Asian", 45)),
        ("000600-1_male_Asian_20", ("000600-1", 0, "Asian", 20)),
        ("006959_Male_Asian_60", ("006959", 0, "Asian", 60)),
    ],
)
def test_parse_folder_name_valid(name, expected):
    assert parse_folder_name(name) == expected


@pytest.mark.parametrize(
    "name",
    ["000001_female_Asian", "000001_woman_Asian_45", "000001_female_Asian_4x", "notes", "a_b_female_Asian_4"],
)
def test_parse_folder_name_invalid(name):
    assert parse_folder_name(name) is None


def test_mask_tree_reads_every_image(train_dir):
    samples, names = load_mask_samples(train_dir)
    assert len(samples) == 7 * len(PEOPLE)
    assert len(names) == 18


def test_mask_tree_skips_hidden_files(train_dir):
    samples, _ = load_mask_samples(train_dir)
    assert not [s for s in samples if s.path.name.startswith(".")]


def test_mask_tree_mixed_extensions(train_dir):
    samples, _ = load_mask_samples(train_dir)
    assert {s.path.suffix for s in samples} == {".jpg", ".JPG", ".jpeg", ".png", ".PNG", ".Jpeg"}


def test_mask_tree_no_warnings_when_complete(train_dir, caplog):
    caplog.set_level(logging.INFO, logger=MASK_LOGGER)
    load_mask_samples(train_dir)
    assert warnings_of(caplog) == []


@pytest.mark.parametrize(
    ("key", "mask", "gender", "age_group", "age"),
    [
        ("000001_male_Asian_20/mask1.jpg", 0, 0, 0, 20),
        ("000009_female_Asian_30/incorrect_mask.Jpeg", 1, 1, 1, 30),
        ("000004_male_Asian_58/normal.jpg", 2, 0, 1, 58),
        ("000012_female_Asian_60/mask5.PNG", 0, 1, 2, 60),
    ],
)
def test_mask_labels_from_folder(train_dir, key, mask, gender, age_group, age):
    sample = samples_by_name(load_mask_samples(train_dir)[0])[key]
    assert (sample.labels.mask, sample.labels.gender, sample.labels.age_group) == (mask, gender, age_group)
    assert sample.labels.age == age
    assert sample.target == mask * 6 + gender * 3 + age_group


def test_mask_labels_follow_cutoffs(train_dir):
    samples = samples_by_name(load_mask_samples(train_dir, age_cutoffs=(30, 58))[0])
    assert samples["000004_male_Asian_58/normal.jpg"].labels.age_group == 2
    assert samples["000004_male_Asian_58/normal.jpg"].target == 2 * 6 + 0 + 2


def test_mask_suffixed_id_kept(train_dir):
    samples = samples_by_name(load_mask_samples(train_dir)[0])
    assert samples["000600-1_male_Asian_45/mask1.jpg"].labels.person_id == "000600-1"


def test_mask_repeated_id_two_people(train_dir):
    samples, _ = load_mask_samples(train_dir)
    groups = {s.group for s in samples if s.labels.person_id == "000700"}
    assert groups == {"000700_female_Asian_29", "000700_female_Asian_61"}
    ages = {s.labels.age_group for s in samples if s.labels.person_id == "000700"}
    assert ages == {0, 2}


def test_mask_missing_files_warn_with_count(train_dir, caplog):
    (train_dir / "images" / PEOPLE[0] / "normal.jpg").unlink()
    (train_dir / "images" / PEOPLE[1] / "mask2.JPG").unlink()
    (train_dir / "images" / PEOPLE[1] / "mask3.jpeg").unlink()
    caplog.set_level(logging.WARNING, logger=MASK_LOGGER)
    samples, _ = load_mask_samples(train_dir)
    assert len(samples) == 7 * len(PEOPLE) - 3
    messages = warnings_of(caplog)
    assert len(messages) == 1
    assert f"2 of {len(PEOPLE)} person folders" in messages[0]
    assert "(3 missing in all)" in messages[0]
    assert f"{PEOPLE[1]} (mask2, mask3)" in messages[0]


def test_mask_extra_files_warn_and_skip(train_dir, caplog):
    folder = train_dir / "images" / PEOPLE[2]
    write_image(folder / "mask6.jpg", 10)
    (folder / "notes.txt").write_text("retaken on Monday")
    (folder / "thumbs").mkdir()
    caplog.set_level(logging.WARNING, logger=MASK_LOGGER)
    samples, _ = load_mask_samples(train_dir)
    assert len(samples) == 7 * len(PEOPLE)
    messages = warnings_of(caplog)
    assert len(messages) == 1
    assert "skipped 3 extra files in 1 person folders" in messages[0]
    assert "mask6.jpg" in messages[0]


def test_mask_duplicate_stem_warns(train_dir, caplog):
    write_image(train_dir / "images" / PEOPLE[3] / "mask1.png", 10)
    caplog.set_level(logging.WARNING, logger=MASK_LOGGER)
    samples, _ = load_mask_samples(train_dir)
    assert len(samples) == 7 * len(PEOPLE) + 1
    messages = warnings_of(caplog)
    assert len(messages) == 1
    assert f"{PEOPLE[3]} (mask1)" in messages[0]


def test_mask_stray_root_file_warns(train_dir, caplog):
    (train_dir / "images" / "readme.txt").write_text("x")
    caplog.set_level(logging.WARNING, logger=MASK_LOGGER)
    load_mask_samples(train_dir)
    messages = warnings_of(caplog)
    assert len(messages) == 1
    assert "readme.txt" in messages[0]


def test_mask_invalid_folder_error_lists(train_dir):
    for name in ("bad_folder", "000099_unknown_Asian_20"):
        make_person(train_dir / "images", name)
    with pytest.raises(ValueError, match="2 folders") as error:
        load_mask_samples(train_dir)
    assert "bad_folder" in str(error.value)
    assert "000099_unknown_Asian_20" in str(error.value)
    assert "skip_invalid_folders" in str(error.value)


def test_mask_invalid_folder_error_truncates(train_dir):
    names = [f"broken{index}" for index in range(MAX_SHOWN + 2)]
    for name in names:
        (train_dir / "images" / name).mkdir()
    with pytest.raises(ValueError, match=f"{len(names)} folders") as error:
        load_mask_samples(train_dir)
    assert names[MAX_SHOWN - 1] in str(error.value)
    assert names[MAX_SHOWN] not in str(error.value)


def test_mask_invalid_folder_skipped_with_option(train_dir, caplog):
    make_person(train_dir / "images", "bad_folder")
    caplog.set_level(logging.WARNING, logger=MASK_LOGGER)
    samples, _ = load_mask_samples(train_dir, skip_invalid_folders=True)
    assert len(samples) == 7 * len(PEOPLE)
    messages = [m for m in warnings_of(caplog) if "do not match" in m]
    assert len(messages) == 1
    assert "skipped 1 folders" in messages[0]
    assert "data.skip_invalid_folders is true" in messages[0]


def test_mask_missing_images_dir(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="images"):
        load_mask_samples(tmp_path / "train")


def test_mask_empty_images_dir(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="no person folders"):
        load_mask_samples(tmp_path / "train")


def test_train_csv_optional(tmp_path, caplog):
    train_dir = make_competition_tree(tmp_path / "data", with_csv=False)
    caplog.set_level(logging.WARNING, logger=MASK_LOGGER)
    samples, _ = load_mask_samples(train_dir)
    assert len(samples) == 7 * len(PEOPLE)
    assert warnings_of(caplog) == []


def test_train_csv_disagreements_warn(train_dir, caplog):
    csv_path = train_dir / "train.csv"
    lines = csv_path.read_text().splitlines()
    lines[1] = lines[1].replace(",20,", ",21,")
    del lines[2]
    lines.append("009999,male,Asian,40,009999_male_Asian_40")
    csv_path.write_text("\n".join(lines) + "\n")
    caplog.set_level(logging.WARNING, logger=MASK_LOGGER)
    samples = samples_by_name(load_mask_samples(train_dir)[0])
    assert samples[f"{PEOPLE[0]}/mask1.jpg"].labels.age == 20
    messages = warnings_of(caplog)
    assert len(messages) == 3
    assert "1 rows" in messages[0]
    assert "009999_male_Asian_40" in messages[0]
    assert f"line 2: {PEOPLE[0]}" in messages[1]
    assert f"1 person folders are not listed in {csv_path}; first: {PEOPLE[1]}" in messages[2]


def test_train_csv_missing_column(train_dir):
    (train_dir / "train.csv").write_text("id,gender,age\n000001,male,20\n")
    with pytest.raises(ValueError, match="race, path"):
        load_mask_samples(train_dir)


def test_mask_sample_applies_exif(tmp_path):
    folder = make_person(tmp_path / "train" / "images", "000001_male_Asian_20", files=IMAGE_FILES[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (24, 32), (200, 10, 10)).save(folder / "mask1.jpg", exif=exif)
    samples = samples_by_name(load_mask_samples(tmp_path / "train")[0])
    assert samples["000001_male_Asian_20/mask1.jpg"].load().size == (32, 24)
    assert samples["000001_male_Asian_20/mask2.JPG"].load().size == (24, 32)


def test_heads_targets_collate(train_dir):
    samples, _ = load_mask_samples(train_dir)
    dataset = ImageDataset(samples[:4], transform=lambda image: torch.zeros(1), target_mode="heads")
    _, targets = next(iter(DataLoader(dataset, batch_size=4)))
    assert set(targets) == {"class", "mask", "gender", "age_group", "age"}
    assert targets["class"].tolist() == [s.target for s in samples[:4]]
    assert targets["age"].tolist() == [s.labels.age for s in samples[:4]]
    assert targets["mask"].tolist() == [0, 0, 0, 0]


def test_heads_mode_rejects_unlabeled():
    samples, _ = load_digits_samples()
    with pytest.raises(ValueError, match="attribute labels"):
        ImageDataset(samples[:3], target_mode="heads")


def test_build_data_mask_layout(train_dir):
    config = load_config(
        "configs/mask.yaml", [f"data.root={train_dir}", "data.image_size=16", "data.val_fraction=0.25"]
    )
    data = build_data(config)
    assert len(data.class_names) == 18
    assert len(data.train) + len(data.val) == 7 * len(PEOPLE)
    assert len(data.val) == 7 * 3
    image, target = data.val[0]
    assert image.shape == (3, 16, 16)
    assert 0 <= target < 18


def test_build_data_mask_skips_invalid_via_config(train_dir):
    shutil.copytree(train_dir / "images" / PEOPLE[0], train_dir / "images" / "copy_of_someone")
    overrides = [f"data.root={train_dir}", "data.image_size=16"]
    with pytest.raises(ValueError, match="copy_of_someone"):
        build_data(load_config("configs/mask.yaml", overrides))
    data = build_data(load_config("configs/mask.yaml", [*overrides, "data.skip_invalid_folders=true"]))
    assert len(data.train) + len(data.val) == 7 * len(PEOPLE)
