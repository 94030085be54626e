"""Focal loss: cross-entropy scaled per sample by ``(1 - p_t) ** gamma``.

``p_t`` is the predicted probability of the sample's true class. The factor is applied to each
sample before the mean, so well-classified samples count less. Scaling the batch-mean
cross-entropy instead would change only the step size. With ``gamma = 0`` it is cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.losses._common import check_inputs, check_weights, weighted_mean


class FocalLoss(nn.Module):
    def __init__(self, num_classes: int, gamma: float = 2.0, class_weights: torch.Tensor | None = None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.num_classes = num_classes
        self.gamma = gamma
        self.register_buffer("class_weights", check_weights(class_weights, num_classes))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, targets, self.num_classes)
        log_p_true = F.log_softmax(logits.float(), dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
        modulating_factor = (1.0 - log_p_true.exp()).clamp(min=0.0) ** self.gamma
        per_sample = -modulating_factor * log_p_true
        return weighted_mean(per_sample, targets, self.class_weights)
