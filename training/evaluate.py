"""The ``evaluate`` command: metrics of a checkpoint on a data set, and a confusion-matrix PNG.

``--data val`` evaluates the validation split of the checkpoint's own config, the same images the
run validated on. ``--data PATH`` evaluates every image of a folder-per-class tree. Its class folders
must be named like the checkpoint's classes, and a subset of them is allowed.

A three-head model is evaluated per head and on the combined class decoded from its heads. It needs
``--data val``, because only the mask data carries the per-attribute labels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from training.checkpoint import load_checkpoint
from training.config import Config
from training.data import build_data
from training.data.datasets import ImageDataset, load_folder_samples
from training.data.transforms import build_eval_transform
from training.engine import LoopOptions, evaluate
from training.losses import build_criterion, build_heads_criterion
from training.metrics import build_epoch_metrics
from training.models import create_model
from training.reporting import format_metrics_table, plot_confusion_matrix
from training.trainer import target_mode

logger = logging.getLogger(__name__)

VALIDATION_SPLIT = "val"


@dataclass
class EvaluationReport:
    scalars: dict[str, float]
    per_class_f1: dict[str, float]
    confusion_matrix: list[list[int]]
    images: int
    table: str
    confusion_png: Path
    metrics_json: Path


def load_trained_model(path: Path, device: torch.device) -> tuple[nn.Module, Config, list[str]]:
    """Return the checkpoint's model in eval mode on ``device``, its config and its class names."""
    state = load_checkpoint(path, map_location=device)
    config = Config.model_validate(state["config"])
    class_names = [str(name) for name in state["class_names"]]
    in_chans = 1 if config.data.color_mode == "L" else 3
    # The checkpoint already contains the trained weights, so the pretrained file is not needed.
    model_config = config.model.model_copy(update={"pretrained": None})
    model = create_model(model_config, len(class_names), in_chans, config.data.age_cutoffs)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config, class_names


def folder_dataset(root: Path, config: Config, class_names: list[str]) -> ImageDataset:
    """Read a folder-per-class tree and map its folder names onto the checkpoint's class indices."""
    samples, folder_names = load_folder_samples(root)
    unknown = [name for name in folder_names if name not in class_names]
    if unknown:
        raise ValueError(
            f"class folders {unknown} under {root} are not classes of the checkpoint; "
            f"allowed folder names: {', '.join(class_names)}"
        )
    remap = {index: class_names.index(name) for index, name in enumerate(folder_names)}
    remapped = [dataclasses.replace(sample, target=remap[sample.target]) for sample in samples]
    return ImageDataset(remapped, build_eval_transform(config.data))


def evaluation_dataset(data: str, config: Config, class_names: list[str]) -> ImageDataset:
    if data == VALIDATION_SPLIT:
        bundle = build_data(config, target_mode(config))
        if list(bundle.class_names) != class_names:
            raise ValueError(
                f"the configured data set has classes {bundle.class_names}, the checkpoint {class_names}"
            )
        return bundle.val
    if config.model.heads != "single":
        raise ValueError(
            f"--data {data}: a three-head model needs per-attribute labels; evaluate it with --data "
            f"{VALIDATION_SPLIT}, the validation split of its mask data"
        )
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data must be '{VALIDATION_SPLIT}' or a folder of class folders: {root}")
    return folder_dataset(root, config, class_names)


def evaluate_checkpoint(
    checkpoint: Path,
    data: str = VALIDATION_SPLIT,
    out: Path | None = None,
    tta: str | None = None,
    batch_size: int = 64,
    device_name: str = "cpu",
) -> EvaluationReport:
    """Evaluate ``checkpoint`` on ``data`` and write the confusion matrix and metrics to ``out``.

    ``tta`` defaults to the checkpoint's ``train.tta``; ``out`` defaults to ``<checkpoint folder>/eval``.
    """
    device = torch.device(device_name)
    model, config, class_names = load_trained_model(Path(checkpoint), device)
    dataset = evaluation_dataset(data, config, class_names)
    if len(dataset) == 0:
        raise ValueError(f"no images to evaluate in {data}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=config.data.num_workers)
    # Unweighted, so that the loss is comparable across checkpoints and data sets.
    loss_config = config.loss.model_copy(update={"class_weights": "none"})
    if config.model.heads == "three":
        criterion = build_heads_criterion(loss_config, config.model).to(device)
    else:
        criterion = build_criterion(loss_config, len(class_names)).to(device)
    metrics = build_epoch_metrics(config.model, len(class_names)).to(device)
    tta = tta or config.train.tta
    scalars, details = evaluate(model, criterion, loader, device, metrics, tta=tta, options=LoopOptions())

    per_class_f1 = dict(zip(class_names, details.per_class_f1[""], strict=True))
    matrix = details.confusion_matrices[""]
    out = Path(out) if out is not None else Path(checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    png = plot_confusion_matrix(matrix, class_names, out / "confusion_matrix.png")
    metrics_json = out / "metrics.json"
    payload = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "tta": tta,
        "images": len(dataset),
        "metrics": scalars,
        "per_class_f1": per_class_f1,
        "confusion_matrix": matrix,
        "class_names": class_names,
    }
    metrics_json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "evaluated %s on %d images of %s (tta %s); wrote %s", checkpoint, len(dataset), data, tta, out
    )
    return EvaluationReport(
        scalars=scalars,
        per_class_f1=per_class_f1,
        confusion_matrix=matrix,
        images=len(dataset),
        table=format_metrics_table(scalars, per_class_f1),
        confusion_png=png,
        metrics_json=metrics_json,
    )
