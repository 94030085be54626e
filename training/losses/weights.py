"""Class weights for imbalanced data."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def balanced_class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Return ``n_samples / (num_classes * count[c])`` per class, as scikit-learn's 'balanced' does.

    A class with no training sample would get an infinite weight, so it is an error.
    """
    counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes)
    if counts.numel() > num_classes:
        raise ValueError(f"targets contain class ids >= num_classes ({num_classes})")
    missing = [index for index, count in enumerate(counts.tolist()) if count == 0]
    if missing:
        raise ValueError(
            f"class ids {missing} have no training samples, so balanced class weights are undefined; "
            "give loss.class_weights as a list instead"
        )
    return (counts.sum() / (num_classes * counts)).to(torch.float32)
