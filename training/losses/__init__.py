"""Classification losses, built from ``LossConfig`` with ``num_classes`` taken from the data.

Every loss takes ``logits [N, num_classes]`` and integer ``targets [N]`` and returns the mean over
the batch. Optional class weights scale each sample by the weight of its target class, and the mean
is then divided by the sum of those weights, as ``torch.nn.CrossEntropyLoss(weight=...)`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from training.config import LossConfig
from training.losses.cross_entropy import CrossEntropyLoss
from training.losses.focal import FocalLoss
from training.losses.label_smoothing import LabelSmoothingLoss, smooth_targets
from training.losses.multi_head import SummedHeadLoss
from training.losses.soft_f1 import SoftF1Loss
from training.losses.weights import balanced_class_weights

__all__ = [
    "CrossEntropyLoss",
    "FocalLoss",
    "LabelSmoothingLoss",
    "SoftF1Loss",
    "SummedHeadLoss",
    "balanced_class_weights",
    "build_criterion",
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
