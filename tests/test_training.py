import argparse
import csv

import pytest
import torch
import yaml

from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_run_folder_contents(tiny_run):
    for name in ("config.yaml", "best.pt", "last.pt", "metrics.csv", "train.log"):
        assert (tiny_run / name).is_file(), name


def test_metrics_csv_has_one_row_per_epoch(tiny_run):
    with (tiny_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("val_accuracy", "val_macro_f1", "val_macro_precision", "val_macro_recall", "val_macro_auroc"):
        assert 0.0 <= float(rows[-1][key]) <= 1.0


def test_resolved_config_written(tiny_run):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["model"]["name"] == "test_resnet"
    assert config["train"]["epochs"] == 2


def test_checkpoint_is_plain_data(tiny_run):
    state = load_checkpoint(tiny_run / "best.pt")
    assert state["class_names"] == [str(i) for i in range(10)]
    assert isinstance(state["config"], dict)


def test_pickled_object_rejected(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "config": argparse.Namespace(lr=0.1), "class_names": []}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)


def test_atomic_save_leaves_no_temporary(tmp_path):
    save_checkpoint({"model": {}, "config": {}, "class_names": []}, tmp_path / "a.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]
