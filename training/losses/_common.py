"""Input checks and the weighted mean shared by the losses."""

from __future__ import annotations

import torch


def check_inputs(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> None:
    """Raise ValueError when the shapes do not match ``[N, num_classes]`` logits and ``[N]`` targets."""
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"logits must have shape [N, {num_classes}] for {num_classes} classes, got {list(logits.shape)}"
        )
    if targets.shape != logits.shape[:1]:
        raise ValueError(
            f"targets must have shape [{logits.shape[0]}] to match the logits, got {list(targets.shape)}"
        )


def check_weights(class_weights: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor(class_weights, dtype=torch.float32)
    if weights.shape != (num_classes,):
        raise ValueError(
            f"class weights must have {num_classes} values, one per class, got shape {list(weights.shape)}"
        )
    return weights


def weighted_mean(
    per_sample: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None
) -> torch.Tensor:
    """Mean of ``per_sample``; with class weights, weighted by each sample's target class."""
    if class_weights is None:
        return per_sample.mean()
    sample_weights = class_weights.to(per_sample.dtype)[targets]
    return (per_sample * sample_weights).sum() / sample_weights.sum()
