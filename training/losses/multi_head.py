"""Criteria for models with several heads: the weighted sum of one loss per head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F


class SummedHeadLoss(nn.Module):
    """Sum ``weights[name] * criteria[name](logits[name], targets[name])`` over the heads.

    ``logits`` and ``targets`` are dicts keyed by head name; keys without a criterion (a derived
    output, an unused label) are ignored. A head missing from either is an error, because skipping
    it would silently leave that head untrained. ``weights`` defaults to 1 for every head.
    """

    def __init__(self, criteria: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None):
        super().__init__()
        if not criteria:
            raise ValueError("SummedHeadLoss needs at least one head")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(criteria))
        if unknown:
            raise ValueError(
                f"weights name heads {unknown} that have no criterion; heads: {sorted(criteria)}"
            )
        self.criteria = nn.ModuleDict(dict(criteria))
        self.weights = {name: float(weights.get(name, 1.0)) for name in criteria}

    def forward(
        self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        expected = set(self.criteria)
        for name, given in (("logits", logits), ("targets", targets)):
            missing = expected - set(given)
            if missing:
                raise ValueError(f"{name} lack heads {sorted(missing)}; expected heads {sorted(expected)}")
        losses = [
            self.weights[name] * criterion(logits[name], targets[name])
            for name, criterion in self.criteria.items()
        ]
        return torch.stack(losses).sum()


class AgeRegressionLoss(nn.Module):
    """Mean smooth L1 (Huber, beta 1 year) or squared error between predicted and true ages in years.

    Takes ``[N]`` predictions and ``[N]`` integer or float targets. The value is in years (smooth L1)
    or squared years (MSE), so it can outweigh a cross-entropy; ``model.head_weights`` scales it.
    """

    def __init__(self, kind: Literal["smooth_l1", "mse"] = "smooth_l1"):
        super().__init__()
        if kind not in ("smooth_l1", "mse"):
            raise ValueError(f"age loss must be 'smooth_l1' or 'mse', got {kind!r}")
        self.kind = kind

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if predictions.ndim != 1 or predictions.shape != targets.shape:
            raise ValueError(
                f"age predictions and targets must both have shape [N], got {list(predictions.shape)} "
                f"and {list(targets.shape)}"
            )
        predictions, targets = predictions.float(), targets.float()
        if self.kind == "mse":
            return F.mse_loss(predictions, targets)
        return F.smooth_l1_loss(predictions, targets, beta=1.0)
