"""Run files besides checkpoints: metrics.csv, TensorBoard events, curves.png, confusion matrices."""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

# Columns that measure speed rather than the model; they differ between identical runs.
TIMING_COLUMNS = ("images_per_second", "data_wait_share", "seconds")


def append_metrics(path: Path, row: dict) -> None:
    """Append one epoch's row, writing the header first when the file is new."""
    new_file = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new_file:
            writer.writeheader()
        writer.writerow(row)


def read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def truncate_metrics(path: Path, last_epoch: int) -> int:
    """Drop rows after ``last_epoch`` (written after the checkpoint a run resumes from).

    Returns the number of rows dropped. The file is rewritten through a temporary file and a rename.
    """
    rows = read_metrics(path)
    kept = [row for row in rows if int(row["epoch"]) <= last_epoch]
    if len(kept) == len(rows):
        return 0
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    os.replace(temporary, path)
    return len(rows) - len(kept)


def open_tensorboard(log_dir: Path, purge_step: int | None = None):
    """Return a SummaryWriter; ``purge_step`` drops events at or after that epoch (on resume)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def write_tensorboard_row(writer, row: dict, epoch: int) -> None:
    """Write every numeric column except ``epoch`` as a scalar at step ``epoch``."""
    for name, value in row.items():
        if name == "epoch" or not isinstance(value, int | float):
            continue
        writer.add_scalar(
            name.replace("_", "/", 1) if name.startswith(("train_", "val_")) else name, value, epoch
        )
    writer.flush()


def plot_curves(rows: Sequence[dict[str, str]], path: Path, monitor_column: str = "val_macro_f1") -> Path:
    """Draw loss, ``monitor_column`` (macro F1 by default) and learning rate by epoch into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for column, label in (("train_loss", "train"), ("val_loss", "validation")):
        axes[0].plot(epochs, [float(row[column]) for row in rows], marker="o", label=label)
    axes[0].set_title("loss")
    axes[0].legend()
    for column in ("train_macro_f1", monitor_column):
        if rows and column in rows[0]:
            axes[1].plot(epochs, [float(row[column]) for row in rows], marker="o", label=column)
    axes[1].set_title("macro F1")
    axes[1].legend()
    axes[2].plot(epochs, [float(row["lr"]) for row in rows], marker="o")
    axes[2].set_title("learning rate")
    axes[2].set_yscale("log")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted class) with counts in cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = len(class_names)
    figure, axis = plt.subplots(figsize=(2 + 0.55 * size, 1.5 + 0.55 * size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    axis.set_xticks(range(size), labels=class_names, rotation=90)
    axis.set_yticks(range(size), labels=class_names)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    peak = max((max(row) for row in matrix), default=0)
    for row_index, row in enumerate(matrix):
        for column_index, count in enumerate(row):
            color = "white" if peak and count > peak / 2 else "black"
            axis.text(column_index, row_index, str(count), ha="center", va="center", color=color, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def format_metrics_table(scalars: dict[str, float], per_class_f1: dict[str, float]) -> str:
    """Return a two-column text table of the scalar metrics, then the F1 of each class."""
    lines = [f"{'metric':<24} {'value':>8}"]
    lines += [f"{name:<24} {value:>8.4f}" for name, value in scalars.items()]
    if per_class_f1:
        lines.append("")
        lines.append(f"{'class':<24} {'f1':>8}")
        lines += [f"{name:<24} {value:>8.4f}" for name, value in per_class_f1.items()]
    return "\n".join(lines)
