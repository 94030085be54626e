"""Cross-entropy against smoothed targets.

The target distribution is ``1 - eps + eps / K`` on the true class and ``eps / K`` on each of the
other ``K - 1`` classes, the definition ``torch.nn.CrossEntropyLoss(label_smoothing=eps)`` uses.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.losses._common import check_inputs, check_weights, weighted_mean


def smooth_targets(targets: torch.Tensor, num_classes: int, epsilon: float) -> torch.Tensor:
    """Return the ``[N, num_classes]`` smoothed target distribution of integer ``targets``."""
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
    off_value = epsilon / num_classes
    smoothed = torch.full((targets.shape[0], num_classes), off_value, device=targets.device)
    smoothed.scatter_(1, targets.unsqueeze(1), 1.0 - epsilon + off_value)
    return smoothed


class LabelSmoothingLoss(nn.Module):
    """Cross-entropy between the softmax of the logits and ``smooth_targets``.

    With class weights, each sample is weighted by its target class's weight. That differs from
    ``torch.nn.CrossEntropyLoss(weight=..., label_smoothing=...)``, which also weights the smoothed
    terms of the other classes.
    """

    def __init__(self, num_classes: int, epsilon: float, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon
        self.register_buffer("class_weights", check_weights(class_weights, num_classes))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, targets, self.num_classes)
        log_probabilities = F.log_softmax(logits.float(), dim=1)
        soft_targets = smooth_targets(targets, self.num_classes, self.epsilon)
        per_sample = -(soft_targets * log_probabilities).sum(dim=1)
        return weighted_mean(per_sample, targets, self.class_weights)
