import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointError, check_resumable, load_checkpoint, save_checkpoint
from training.config import ConfigError, load_config
from training.reporting import TIMING_COLUMNS
from training.resume import config_for_resume

REPO = Path(__file__).resolve().parent.parent

# Small enough for a few seconds per process on 2 cores. Rotation makes the augmentation random, and
# accumulation over 4 of 6 micro-batches leaves a short group at the end of each epoch.
RESUME_OVERRIDES = [
    "model.name=test_resnet",
    "data.image_size=16",
    "data.batch_size=32",
    "augment.rotation=10",
    "train.limit_train_batches=6",
    "train.accumulation_steps=4",
    "train.log_interval=100",
    "lr_scheduler.name=steplr",
    "lr_scheduler.step_size=1",
    "lr_scheduler.gamma=0.7",
    "train.device=cpu",
]


def start_training(args: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "training", "train", *args]
    # One thread per process: both runs then do the same arithmetic in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> Path:
    stdout, stderr = process.communicate(timeout=240)
    if process.returncode != 0:
        raise AssertionError(f"training failed with exit code {process.returncode}:\n{stderr[-3000:]}")
    return Path(stdout.strip().splitlines()[-1])


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return [{key: value for key, value in row.items() if key not in TIMING_COLUMNS} for row in rows]


@pytest.fixture(scope="module")
def resumed_and_straight(tmp_path_factory) -> tuple[Path, Path]:
    """A run of 2 epochs resumed to 4 in a new process, and a run of 4 epochs without a stop."""
    base = ["--config", "configs/digits.yaml", *(f"--set={item}" for item in RESUME_OVERRIDES)]
    straight = start_training([*base, f"--set=train.output_dir={tmp_path_factory.mktemp('straight')}",
                               "--set=train.epochs=4"])  # fmt: skip
    first = start_training([*base, f"--set=train.output_dir={tmp_path_factory.mktemp('resumed')}",
                            "--set=train.epochs=2"])  # fmt: skip
    resumed_dir = finish(first)
    # A row written after the checkpoint (as by a kill between the two writes) must not survive.
    with (resumed_dir / "metrics.csv").open("a") as handle:
        handle.write("3" + ",0" * (len(read_rows(resumed_dir)[0]) + len(TIMING_COLUMNS) - 1) + "\n")
    second = start_training(["--resume", str(resumed_dir / "last.pt"), "--set=train.epochs=4"])
    assert finish(second) == resumed_dir
    return resumed_dir, finish(straight)


def test_resume_same_weights(resumed_and_straight):
    resumed, straight = (load_checkpoint(path / "last.pt") for path in resumed_and_straight)
    assert resumed["model"].keys() == straight["model"].keys()
    different = [
        name for name in resumed["model"] if not torch.equal(resumed["model"][name], straight["model"][name])
    ]
    assert different == []


def test_resume_same_optimizer_state(resumed_and_straight):
    resumed, straight = (load_checkpoint(path / "last.pt") for path in resumed_and_straight)
    for key, state in straight["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][key]["exp_avg"], state["exp_avg"])


def test_resume_same_metrics(resumed_and_straight):
    resumed, straight = (read_rows(path) for path in resumed_and_straight)
    assert [row["epoch"] for row in resumed] == ["1", "2", "3", "4"]
    assert resumed == straight


def test_resume_checkpoint_counters(resumed_and_straight):
    resumed, straight = (load_checkpoint(path / "last.pt") for path in resumed_and_straight)
    assert (resumed["epoch"], resumed["step"]) == (4, 8)
    assert resumed["lr_scheduler"] == straight["lr_scheduler"]


def test_checkpoint_loads_weights_only(resumed_and_straight):
    state = torch.load(resumed_and_straight[0] / "last.pt", weights_only=True)
    assert sorted(state["rng_states"][0]) == ["cuda", "numpy", "python", "torch"]


def test_resume_config_written(resumed_and_straight):
    assert load_config(resumed_and_straight[0] / "config.yaml").train.epochs == 4


def saved_state(epochs: int = 4, epoch: int = 2, scheduler: str = "steplr") -> dict:
    config = load_config(None, [f"train.epochs={epochs}", f"lr_scheduler.name={scheduler}"])
    return {"config": config.model_dump(mode="json"), "epoch": epoch}


def test_resume_needs_more_epochs():
    with pytest.raises(ConfigError, match="at epoch 4 and train.epochs is 4; raise it"):
        config_for_resume(saved_state(epochs=4, epoch=4))


def test_resume_per_step_schedule_fixed():
    with pytest.raises(ConfigError, match="train.epochs cannot change on resume with lr_scheduler 'cosine'"):
        config_for_resume(saved_state(scheduler="cosine"), ["train.epochs=6"])


def test_resume_override_applied():
    assert config_for_resume(saved_state(), ["train.epochs=9"]).train.epochs == 9


def test_resume_invalid_override_named():
    with pytest.raises(ConfigError, match="optimizer.learning_rate"):
        config_for_resume(saved_state(), ["optimizer.learning_rate=0.1"])


def test_resume_needs_training_state(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"keys \['optimizer', 'epoch', 'step', 'rng_states'\] are missing"
    ):
        check_resumable({"model": {}, "config": {}, "class_names": []}, tmp_path / "export-only.pt")


def test_resume_and_config_exclusive(tmp_path, caplog):
    from training.__main__ import main

    code = main(["train", "--config", "configs/digits.yaml", "--resume", str(tmp_path / "last.pt")])
    assert code == 2
    assert "not both" in caplog.text


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this value")


def test_failed_save_keeps_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}, "class_names": ["a"]}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(
            {"model": {"w": torch.zeros(3)}, "config": {}, "class_names": ["a"], "x": Unpicklable()}, path
        )
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
