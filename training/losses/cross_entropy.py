"""Cross-entropy: PyTorch's own, with the class count checked against the logits."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.losses._common import check_inputs, check_weights


class CrossEntropyLoss(nn.Module):
    """``torch.nn.functional.cross_entropy`` with optional class weights and label smoothing."""

    def __init__(
        self, num_classes: int, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0
    ):
        super().__init__()
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", check_weights(class_weights, num_classes))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, targets, self.num_classes)
        return F.cross_entropy(
            logits.float(), targets, weight=self.class_weights, label_smoothing=self.label_smoothing
        )
