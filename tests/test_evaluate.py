import json

import numpy as np
import pytest
from PIL import Image

from training.__main__ import main
from training.checkpoint import load_checkpoint
from training.evaluate import evaluate_checkpoint

METRIC_NAMES = ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall", "macro_auroc")


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().out


def test_evaluate_cli_prints_table(tiny_run, tmp_path, capsys):
    code, stdout = run_cli(
        ["evaluate", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path)], capsys
    )
    assert code == 0
    assert "360 images from val" in stdout
    for name in (*METRIC_NAMES, "class"):
        assert f"\n{name} " in stdout, name
    assert stdout.strip().splitlines()[-1] == str(tmp_path / "confusion_matrix.png")


def test_evaluate_writes_confusion_png(tiny_run, tmp_path):
    report = evaluate_checkpoint(tiny_run / "best.pt", out=tmp_path)
    with Image.open(report.confusion_png) as image:
        assert image.format == "PNG"
        assert image.width > 100


def test_evaluate_matches_training_metrics(tiny_run, tmp_path):
    report = evaluate_checkpoint(tiny_run / "best.pt", out=tmp_path)
    saved = load_checkpoint(tiny_run / "best.pt")["metrics"]
    for name in METRIC_NAMES:
        assert report.scalars[name] == pytest.approx(saved[name], abs=1e-6), name


def test_evaluate_confusion_counts(tiny_run, tmp_path):
    report = evaluate_checkpoint(tiny_run / "best.pt", out=tmp_path)
    matrix = np.array(report.confusion_matrix)
    assert matrix.shape == (10, 10)
    assert matrix.sum() == 360
    assert np.trace(matrix) / 360 == pytest.approx(report.scalars["accuracy"], abs=1e-6)


def test_evaluate_metrics_json(tiny_run, tmp_path):
    evaluate_checkpoint(tiny_run / "best.pt", out=tmp_path, tta="hflip")
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["tta"] == "hflip"
    assert payload["images"] == 360
    assert sorted(payload["per_class_f1"]) == [str(digit) for digit in range(10)]


def test_evaluate_tta_changes_loss(tiny_run, tmp_path):
    plain = evaluate_checkpoint(tiny_run / "best.pt", out=tmp_path / "plain", tta="none")
    flipped = evaluate_checkpoint(tiny_run / "best.pt", out=tmp_path / "flip", tta="hflip")
    assert flipped.scalars["loss"] != pytest.approx(plain.scalars["loss"], abs=1e-4)


@pytest.fixture
def digit_folder(tmp_path):
    """Class folders '3' and '7' holding real digit scans as PNG files."""
    from sklearn.datasets import load_digits

    from training.data.datasets import digits_to_uint8

    digits = load_digits()
    root = tmp_path / "digits"
    counts = {"3": 0, "7": 0}
    scans = zip(digits_to_uint8(digits.images[:200]), digits.target[:200], strict=True)
    for index, (pixels, target) in enumerate(scans):
        if str(target) in counts:
            folder = root / str(target)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{index:03d}.png")
            counts[str(target)] += 1
    return root, counts


def test_evaluate_folder_maps_classes(tiny_run, digit_folder, tmp_path):
    root, counts = digit_folder
    report = evaluate_checkpoint(tiny_run / "best.pt", str(root), out=tmp_path)
    row_totals = np.array(report.confusion_matrix).sum(axis=1)
    assert report.images == counts["3"] + counts["7"]
    assert row_totals[3] == counts["3"]
    assert row_totals[7] == counts["7"]
    assert row_totals.sum() == report.images


def test_evaluate_folder_unknown_class(tiny_run, digit_folder, tmp_path):
    root, _ = digit_folder
    (root / "x").mkdir()
    Image.new("L", (8, 8)).save(root / "x" / "a.png")
    with pytest.raises(ValueError, match=r"class folders \['x'\] .* are not classes of the checkpoint"):
        evaluate_checkpoint(tiny_run / "best.pt", str(root), out=tmp_path)


def test_evaluate_missing_checkpoint(tmp_path, caplog):
    code = main(["evaluate", "--checkpoint", str(tmp_path / "absent.pt")])
    assert code == 2
    assert "checkpoint not found" in caplog.text


def test_evaluate_missing_data_folder(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="--data must be 'val' or a folder"):
        evaluate_checkpoint(tiny_run / "best.pt", str(tmp_path / "absent"), out=tmp_path)
