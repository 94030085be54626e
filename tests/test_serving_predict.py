"""Offline batch prediction: ``python -m serving.predict`` with the serving engine and no torch."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.engine import OnnxClassifier
from serving.predict import main
from serving.preprocess import load_array


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def image_folder(digit_pngs, tmp_path_factory) -> Path:
    """Digit PNGs in two subfolders, beside a text file and a hidden file that are skipped."""
    paths, _ = digit_pngs
    root = tmp_path_factory.mktemp("folder")
    for index, path in enumerate(paths[:12]):
        target = root / ("even" if index % 2 == 0 else "odd") / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    (root / "notes.txt").write_text("not an image")
    shutil.copy(paths[0], root / ".hidden.png")
    return root


@pytest.fixture(scope="module")
def competition_eval(digit_pngs, tmp_path_factory) -> tuple[Path, list[str]]:
    """An ``eval`` folder: ``info.csv`` (ImageID,ans) listing images out of name order."""
    paths, _ = digit_pngs
    root = tmp_path_factory.mktemp("eval")
    (root / "images").mkdir()
    image_ids = []
    for path in reversed(paths[:9]):
        image_id = f"{path.stem}.png"
        shutil.copy(path, root / "images" / image_id)
        image_ids.append(image_id)
    with (root / "info.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageID", "ans"])
        writer.writerows([image_id, 0] for image_id in image_ids)
    return root / "info.csv", image_ids


def offline_ids(tiny_export: Path, paths: list[Path]) -> list[int]:
    classifier = OnnxClassifier(tiny_export)
    rows = classifier.predict_arrays([load_array(path, classifier.spec) for path in paths])
    return [row[0].class_id for row in rows]


def test_folder_predictions(tiny_export, image_folder, tmp_path):
    out = tmp_path / "predictions.csv"
    assert main(["--model", str(tiny_export), "--images", str(image_folder), "--out", str(out)]) == 0
    rows = read_rows(out)
    expected_paths = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    expected_paths = [p for p in expected_paths if not p.startswith(".")]
    assert rows[0] == ["path", "class_id", "label", "score"]
    assert [row[0] for row in rows[1:]] == expected_paths
    ids = offline_ids(tiny_export, [image_folder / p for p in expected_paths])
    assert [int(row[1]) for row in rows[1:]] == ids


def test_submission_format(tiny_export, competition_eval, tmp_path):
    info, image_ids = competition_eval
    out = tmp_path / "submission.csv"
    assert main(["--model", str(tiny_export), "--images", str(info), "--out", str(out), "--no-progress"]) == 0
    rows = read_rows(out)
    assert rows[0] == ["ImageID", "ans"]
    assert [row[0] for row in rows[1:]] == image_ids
    ids = offline_ids(tiny_export, [info.parent / "images" / image_id for image_id in image_ids])
    assert [int(row[1]) for row in rows[1:]] == ids


@pytest.mark.parametrize("batch_size", ["1", "5", "64"])
def test_batch_size_same_output(tiny_export, image_folder, tmp_path, batch_size):
    reference = tmp_path / "reference.csv"
    out = tmp_path / "out.csv"
    main(
        ["--model", str(tiny_export), "--images", str(image_folder), "--out", str(reference), "--no-progress"]
    )
    arguments = ["--model", str(tiny_export), "--images", str(image_folder), "--out", str(out)]
    assert main([*arguments, "--batch-size", batch_size, "--no-progress"]) == 0
    assert read_rows(out) == read_rows(reference)


def test_undecodable_file_listed(tiny_export, image_folder, tmp_path, caplog):
    folder = tmp_path / "images"
    shutil.copytree(image_folder, folder)
    (folder / "even" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out.csv"
    assert (
        main(["--model", str(tiny_export), "--images", str(folder), "--out", str(out), "--no-progress"]) == 1
    )
    assert not out.exists()
    assert "broken.png" in caplog.text


def test_missing_listed_image(tiny_export, competition_eval, tmp_path, caplog):
    info, _ = competition_eval
    damaged = tmp_path / "eval"
    shutil.copytree(info.parent, damaged)
    first = sorted((damaged / "images").iterdir())[0]
    first.unlink()
    out = tmp_path / "out.csv"
    arguments = ["--model", str(tiny_export), "--images", str(damaged / "info.csv"), "--out", str(out)]
    assert main([*arguments, "--no-progress"]) == 1
    assert first.name in caplog.text


def test_cli_progress_without_torch(tiny_export, image_folder, tmp_path):
    out = tmp_path / "out.csv"
    arguments = ["--model", str(tiny_export), "--images", str(image_folder), "--out", str(out)]
    code = (
        f"import sys, serving.predict as p; rc = p.main({arguments!r}); "
        "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no torch"
    assert "12/12" in result.stderr
