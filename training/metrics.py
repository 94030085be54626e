"""Epoch-level classification metrics from torchmetrics.

Metrics accumulate over every batch of an epoch and are computed once at its end, so they are exact
for the whole set and never an average of per-batch values.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def build_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            "macro_precision": MulticlassPrecision(num_classes, average="macro"),
            "macro_recall": MulticlassRecall(num_classes, average="macro"),
            "macro_auroc": MulticlassAUROC(num_classes, average="macro"),
        }
    )


def compute_metrics(collection: MetricCollection) -> dict[str, float]:
    return {name: float(value) for name, value in collection.compute().items()}


def update_metrics(collection: MetricCollection, logits: torch.Tensor, targets: torch.Tensor) -> None:
    collection.update(logits.float().softmax(dim=1), targets)
