import csv
import logging

import pytest
from mask_tree import EVAL_IDS, TINY_MASK_OVERRIDES, make_competition_tree, make_eval

from training.__main__ import main
from training.config import load_config
from training.data import build_data
from training.predict import read_image_ids, resolve_image_paths


def read_rows(path):
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory):
    """Train through the command line on a competition-layout tree; return (tree root, best.pt)."""
    root = tmp_path_factory.mktemp("competition")
    train_dir = make_competition_tree(root)
    runs = tmp_path_factory.mktemp("runs")
    argv = ["train", "--config", "configs/mask.yaml", "--set", f"data.root={train_dir}"]
    for override in [*TINY_MASK_OVERRIDES, f"train.output_dir={runs}"]:
        argv += ["--set", override]
    assert main(argv) == 0
    (run_dir,) = (runs / "mask").iterdir()
    return root, run_dir / "best.pt"


def test_mask_train_writes_checkpoint(mask_run):
    _, checkpoint = mask_run
    assert checkpoint.is_file()


def test_mask_run_split_by_person(mask_run):
    _, checkpoint = mask_run
    data = build_data(load_config(checkpoint.parent / "config.yaml"))
    train_people = {sample.group for sample in data.train.samples}
    val_people = {sample.group for sample in data.val.samples}
    assert train_people.isdisjoint(val_people)
    # 12 people at val_fraction 0.2: round(2.4) = 2 people with 7 images each.
    assert len(val_people) == 2
    assert len(data.val) == 14
    assert len(data.class_names) == 18


def test_predict_submission_in_input_order(mask_run, tmp_path):
    root, checkpoint = mask_run
    out = tmp_path / "submission.csv"
    assert main(["predict", "--checkpoint", str(checkpoint), "--info", str(root / "eval" / "info.csv"),
                 "--out", str(out)]) == 0  # fmt: skip
    rows = read_rows(out)
    assert rows[0] == ["ImageID", "ans"]
    assert [row[0] for row in rows[1:]] == list(EVAL_IDS)
    assert all(0 <= int(row[1]) < 18 for row in rows[1:])


def test_predict_submission_images_option(mask_run, tmp_path):
    _, checkpoint = mask_run
    ids = ("b.jpg", "a.png")
    info = make_eval(tmp_path, ids)
    moved = tmp_path / "elsewhere"
    (tmp_path / "eval" / "images").rename(moved)
    out = tmp_path / "submission.csv"
    argv = ["predict", "--checkpoint", str(checkpoint), "--info", str(info), "--images", str(moved)]
    assert main([*argv, "--out", str(out)]) == 0
    assert [row[0] for row in read_rows(out)[1:]] == list(ids)


def test_predict_needs_images_or_info(mask_run, tmp_path, caplog):
    _, checkpoint = mask_run
    caplog.set_level(logging.ERROR, logger="training")
    assert main(["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.csv")]) == 2
    assert "--images DIR" in caplog.text


def test_predict_folder_csv_unchanged(mask_run, tmp_path):
    root, checkpoint = mask_run
    out = tmp_path / "predictions.csv"
    argv = ["predict", "--checkpoint", str(checkpoint), "--images", str(root / "eval" / "images")]
    assert main([*argv, "--out", str(out)]) == 0
    rows = read_rows(out)
    assert rows[0] == ["path", "class_id", "label", "score"]
    assert sorted(row[0] for row in rows[1:]) == sorted(EVAL_IDS)


def test_read_image_ids_keeps_order(tmp_path):
    info = tmp_path / "info.csv"
    info.write_text("\ufeffImageID,ans\nz.jpg,0\na.jpg,0\nm.jpg,3\n", encoding="utf-8")
    assert read_image_ids(info) == ["z.jpg", "a.jpg", "m.jpg"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("image,ans\na.jpg,0\n", "no ImageID column"), ("ImageID,ans\n", "lists no images")],
)
def test_read_image_ids_rejects(tmp_path, text, message):
    info = tmp_path / "info.csv"
    info.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_image_ids(info)


def test_read_image_ids_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="info file not found"):
        read_image_ids(tmp_path / "info.csv")


def test_resolve_paths_lists_missing(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"2 of 3 images") as error:
        resolve_image_paths(["a.jpg", "b.jpg", "c.png"], tmp_path)
    assert "b.jpg" in str(error.value)
    assert "c.png" in str(error.value)


@pytest.mark.parametrize("image_id", ["../secret.jpg", "/etc/x.jpg", ""])
def test_resolve_paths_rejects_outside(tmp_path, image_id):
    with pytest.raises(ValueError, match="empty or leave"):
        resolve_image_paths([image_id], tmp_path)
