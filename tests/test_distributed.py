import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.distributed import DistributedContext, init_distributed, read_env_int

REPO = Path(__file__).resolve().parent.parent

DDP_OVERRIDES = [
    "model.name=test_resnet",
    "data.image_size=16",
    "data.batch_size=32",
    "train.epochs=2",
    "train.limit_train_batches=4",
    "train.accumulation_steps=2",
    "train.log_interval=100",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """Two CPU processes under torchrun (gloo); returns the output folder, the run folder and stdout."""
    output_dir = tmp_path_factory.mktemp("ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "training", "train", "--config", "configs/digits.yaml",
        *(f"--set={item}" for item in [*DDP_OVERRIDES, f"train.output_dir={output_dir}"]),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if completed.returncode != 0:
        raise AssertionError(
            f"torchrun failed with exit code {completed.returncode}:\n{completed.stderr[-4000:]}"
        )
    return output_dir, Path(completed.stdout.strip().splitlines()[-1]), completed.stdout


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_ddp_one_run_folder(ddp_run):
    output_dir, run_dir, _ = ddp_run
    assert list((output_dir / "digits").iterdir()) == [run_dir]


def test_ddp_prints_run_once(ddp_run):
    _, run_dir, stdout = ddp_run
    assert stdout.split().count(str(run_dir)) == 1


def test_ddp_one_row_per_epoch(ddp_run):
    assert [row["epoch"] for row in read_rows(ddp_run[1])] == ["1", "2"]


def test_ddp_one_event_file(ddp_run):
    assert len(list((ddp_run[1] / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_ddp_checkpoint_plain_keys(ddp_run):
    state = load_checkpoint(ddp_run[1] / "last.pt")
    assert not [name for name in state["model"] if name.startswith("module.")]
    assert state["epoch"] == 2
    assert len(state["rng_states"]) == 2


def test_ddp_metrics_cover_whole_val_set(ddp_run):
    from training.evaluate import evaluate_checkpoint

    run_dir = ddp_run[1]
    logged = read_rows(run_dir)[-1]
    report = evaluate_checkpoint(run_dir / "last.pt", "val", out=run_dir / "eval-check")
    assert report.images == 360
    for name in ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall", "macro_auroc"):
        assert float(logged[f"val_{name}"]) == pytest.approx(report.scalars[name], abs=1e-5), name


def test_ddp_trained_on_both_shards(ddp_run):
    # Two processes of 4 micro-batches of 32 images each.
    assert "256 train images" in (ddp_run[1] / "train.log").read_text()


def test_single_process_context(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert context == DistributedContext(rank=0, local_rank=0, world_size=1)
    assert not torch.distributed.is_initialized()


def test_env_int_invalid(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        read_env_int("WORLD_SIZE", 1)
