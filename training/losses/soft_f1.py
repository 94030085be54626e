"""Soft F1 loss: ``1 - mean over classes of a differentiable F1``.

Softmax probabilities replace hard predictions in the counts: ``tp = sum(p * y)``,
``fp = sum(p * (1 - y))`` and ``fn = sum((1 - p) * y)`` over the batch, with ``y`` one-hot targets,
and ``F1 = 2 tp / (2 tp + fp + fn)``. The counts are per batch, so small batches give noisy F1 for
rare classes. A class absent from the batch and never predicted has an F1 near 0, not 1.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.losses._common import check_inputs, check_weights

# Keeps the F1 of a class with no targets and no predicted mass finite.
EPSILON = 1e-7


class SoftF1Loss(nn.Module):
    """With class weights, the mean over classes is weighted by them."""

    def __init__(self, num_classes: int, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("class_weights", check_weights(class_weights, num_classes))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, targets, self.num_classes)
        probabilities = F.softmax(logits.float(), dim=1)
        one_hot = F.one_hot(targets, self.num_classes).to(probabilities.dtype)
        true_positives = (probabilities * one_hot).sum(dim=0)
        false_positives = (probabilities * (1.0 - one_hot)).sum(dim=0)
        false_negatives = ((1.0 - probabilities) * one_hot).sum(dim=0)
        f1 = 2 * true_positives / (2 * true_positives + false_positives + false_negatives + EPSILON)
        if self.class_weights is None:
            return 1.0 - f1.mean()
        weights = self.class_weights.to(f1.dtype)
        return 1.0 - (f1 * weights).sum() / weights.sum()
