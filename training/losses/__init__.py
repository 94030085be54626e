"""Classification losses, built from ``LossConfig`` with ``num_classes`` taken from the data.

Every loss takes ``logits [N, num_classes]`` and integer ``targets [N]`` and returns the mean over
the batch. Optional class weights scale each sample by the weight of its target class, and the mean
is then divided by the sum of those weights, as ``torch.nn.CrossEntropyLoss(weight=...)`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from training.config import LossConfig, ModelConfig
from training.data.labels import HEAD_SIZES
from training.losses.cross_entropy import CrossEntropyLoss
from training.losses.focal import FocalLoss
from training.losses.label_smoothing import LabelSmoothingLoss, smooth_targets
from training.losses.multi_head import AgeRegressionLoss, SummedHeadLoss
from training.losses.soft_f1 import SoftF1Loss
from training.losses.weights import balanced_class_weights

__all__ = [
    "AgeRegressionLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LabelSmoothingLoss",
    "SoftF1Loss",
    "SummedHeadLoss",
    "balanced_class_weights",
    "build_criterion",
    "build_heads_criterion",
    "resolve_class_weights",
    "smooth_targets",
]


def resolve_class_weights(
    config: LossConfig, num_classes: int, train_targets: Sequence[int]
) -> torch.Tensor | None:
    """Return the per-class weights that ``config.class_weights`` selects, or None."""
    if config.class_weights == "none":
        return None
    if config.class_weights == "balanced":
        return balanced_class_weights(train_targets, num_classes)
    if len(config.class_weights) != num_classes:
        raise ValueError(
            f"loss.class_weights has {len(config.class_weights)} values but the data has "
            f"{num_classes} classes; give one weight per class"
        )
    return torch.tensor(config.class_weights, dtype=torch.float32)


def build_criterion(
    config: LossConfig, num_classes: int, class_weights: torch.Tensor | None = None
) -> nn.Module:
    """Create the configured loss for ``num_classes`` classes."""
    if config.name == "cross_entropy":
        return CrossEntropyLoss(num_classes, class_weights, config.label_smoothing)
    if config.name == "label_smoothing":
        return LabelSmoothingLoss(num_classes, config.label_smoothing, class_weights)
    if config.name == "focal":
        return FocalLoss(num_classes, config.focal_gamma, class_weights)
    if config.name == "soft_f1":
        return SoftF1Loss(num_classes, class_weights)
    raise ValueError(
        f"unknown loss.name {config.name!r}; allowed: cross_entropy, focal, label_smoothing, soft_f1"
    )


def build_heads_criterion(
    loss: LossConfig,
    model: ModelConfig,
    head_targets: Mapping[str, Sequence[int]] | None = None,
) -> SummedHeadLoss:
    """Create the summed loss of a three-head model: ``loss`` for each classification head.

    The age head is a classification head (``age_group``) or, with ``model.age_head: regression``,
    an ``AgeRegressionLoss`` on ``age``. ``loss.class_weights: balanced`` weights every
    classification head by its own label counts in ``head_targets`` (training labels by head name).
    ``model.head_weights`` scales each head's loss; its ``age`` key applies to either age head.
    """
    if isinstance(loss.class_weights, list):
        raise ValueError(
            f"loss.class_weights as a list ({len(loss.class_weights)} values) has no meaning for three "
            "heads of 3, 2 and 3 classes; use 'balanced' or 'none'"
        )
    age_name = "age" if model.age_head == "regression" else "age_group"
    criteria: dict[str, nn.Module] = {}
    for name in ("mask", "gender", "age_group"):
        if name == "age_group" and model.age_head == "regression":
            criteria["age"] = AgeRegressionLoss(model.age_loss)
            continue
        weights = None
        if loss.class_weights == "balanced":
            if head_targets is None or name not in head_targets:
                raise ValueError(f"loss.class_weights balanced needs the training labels of head {name!r}")
            weights = balanced_class_weights(head_targets[name], HEAD_SIZES[name])
        criteria[name] = build_criterion(loss, HEAD_SIZES[name], weights)
    head_weights = {age_name if key == "age" else key: value for key, value in model.head_weights.items()}
    return SummedHeadLoss(criteria, head_weights)
