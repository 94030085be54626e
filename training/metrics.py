"""Epoch-level classification metrics from torchmetrics.

Metrics accumulate over every batch of an epoch and are computed once at its end, so they are exact
for the whole set and never an average of per-batch values. Under ``torch.distributed`` torchmetrics
gathers the states of every process in ``compute()``, so each process gets the metrics of the whole
data set.

A model may have one head (``logits`` is a tensor) or several (``logits`` is a dict of tensors keyed
by head name, with targets keyed the same way). Several heads get metrics per head, prefixed with the
head name. Optional combined metrics, under unprefixed names, cover the product of the heads'
classes. The combined class is the mixed-radix number of the head classes in head order, for example
``a * 6 + b * 3 + c`` for heads of 3, 2 and 3 classes. Its probability is the product of the head
probabilities, which assumes the heads are independent.

Regression heads (a tensor ``[N]`` of values, such as the age in years) get the mean absolute error
and the mean squared error, as ``<head>_mae`` and ``<head>_mse``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from training.config import ModelConfig
from training.data.labels import HEAD_SIZES

Outputs = torch.Tensor | Mapping[str, torch.Tensor]

SCALAR_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "macro_auroc")
TRAIN_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("mae", "mse")
COMBINED = ""


@dataclass
class MetricsResult:
    """Scalars keyed as ``[head_]metric``; per-class F1 and confusion matrices keyed by head name,
    where ``""`` is the single head or the combined classes."""

    scalars: dict[str, float] = field(default_factory=dict)
    per_class_f1: dict[str, list[float]] = field(default_factory=dict)
    confusion_matrices: dict[str, list[list[int]]] = field(default_factory=dict)


def build_collection(num_classes: int, full: bool = True) -> MetricCollection:
    """Create the metrics of one head; ``full=False`` keeps only accuracy and macro F1 (cheap)."""
    metrics = {
        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if full:
        metrics |= {
            "macro_precision": MulticlassPrecision(num_classes, average="macro"),
            "macro_recall": MulticlassRecall(num_classes, average="macro"),
            "macro_auroc": MulticlassAUROC(num_classes, average="macro"),
            "per_class_f1": MulticlassF1Score(num_classes, average=None),
            "confusion_matrix": MulticlassConfusionMatrix(num_classes),
        }
    return MetricCollection(metrics)


def combine_probabilities(probabilities: list[torch.Tensor]) -> torch.Tensor:
    """Return ``[N, prod(K_i)]`` joint probabilities of independent heads, in mixed-radix order."""
    joint = probabilities[0]
    for head in probabilities[1:]:
        joint = (joint.unsqueeze(2) * head.unsqueeze(1)).flatten(1)
    return joint


def combine_targets(targets: list[torch.Tensor], num_classes: list[int]) -> torch.Tensor:
    """Return the mixed-radix class of the head targets: for sizes (3, 2, 3), ``a * 6 + b * 3 + c``."""
    combined = torch.zeros_like(targets[0])
    for head_targets, size in zip(targets, num_classes, strict=True):
        combined = combined * size + head_targets
    return combined


class EpochMetrics:
    """Metrics of one epoch for a model with one head or several.

    ``num_classes`` is an int for one head, or a dict of head name to class count (in head order).
    ``combined`` adds metrics over the joint classes of several heads, under unprefixed names.
    ``regression`` names further heads whose outputs and targets are values ``[N]``.
    """

    def __init__(
        self,
        num_classes: int | Mapping[str, int],
        full: bool = True,
        combined: bool = True,
        regression: Sequence[str] = (),
    ):
        self.full = full
        self.regression = {
            name: MetricCollection({"mae": MeanAbsoluteError(), "mse": MeanSquaredError()})
            for name in regression
        }
        if isinstance(num_classes, int):
            if regression:
                raise ValueError(f"regression heads {list(regression)} need a dict of classification heads")
            self.heads = None
            self.collections = {COMBINED: build_collection(num_classes, full)}
            return
        self.heads = dict(num_classes)
        if not self.heads:
            raise ValueError("num_classes needs at least one head")
        self.collections = {name: build_collection(size, full) for name, size in self.heads.items()}
        if combined:
            self.collections[COMBINED] = build_collection(math.prod(self.heads.values()), full)

    def names(self) -> list[str]:
        """Return the scalar metric names ``compute()`` produces, 'loss' excluded."""
        scalar_names = SCALAR_METRICS if self.full else TRAIN_METRICS
        prefixes = [name + "_" if name else "" for name in self.collections]
        names = [prefix + metric for prefix in prefixes for metric in scalar_names]
        return names + [f"{head}_{metric}" for head in self.regression for metric in REGRESSION_METRICS]

    def to(self, device: torch.device) -> EpochMetrics:
        for collection in [*self.collections.values(), *self.regression.values()]:
            collection.to(device)
        return self

    def reset(self) -> None:
        for collection in [*self.collections.values(), *self.regression.values()]:
            collection.reset()

    @torch.no_grad()
    def update(self, logits: Outputs, targets: Outputs) -> None:
        if self.heads is None:
            if not isinstance(logits, torch.Tensor):
                raise ValueError(f"a single-head model must return a tensor, got {type(logits).__name__}")
            self.collections[COMBINED].update(logits.float().softmax(dim=1), targets)
            return
        missing = [
            name for name in [*self.heads, *self.regression] if name not in logits or name not in targets
        ]
        if missing:
            raise ValueError(f"logits or targets lack heads {missing}; expected heads {list(self.heads)}")
        probabilities = {name: logits[name].float().softmax(dim=1) for name in self.heads}
        for name in self.heads:
            self.collections[name].update(probabilities[name], targets[name])
        if COMBINED in self.collections:
            joint = combine_probabilities([probabilities[name] for name in self.heads])
            joint_targets = combine_targets([targets[name] for name in self.heads], list(self.heads.values()))
            self.collections[COMBINED].update(joint, joint_targets)
        for name, collection in self.regression.items():
            collection.update(logits[name].float(), targets[name].float())

    def compute(self) -> MetricsResult:
        result = MetricsResult()
        for head, collection in self.collections.items():
            prefix = head + "_" if head else ""
            values = collection.compute()
            for name, value in values.items():
                if name == "per_class_f1":
                    result.per_class_f1[head] = [float(v) for v in value]
                elif name == "confusion_matrix":
                    result.confusion_matrices[head] = value.long().tolist()
                else:
                    result.scalars[prefix + name] = float(value)
        for head, collection in self.regression.items():
            result.scalars |= {f"{head}_{name}": float(value) for name, value in collection.compute().items()}
        return result


def build_epoch_metrics(model: ModelConfig, num_classes: int, full: bool = True) -> EpochMetrics:
    """Create the metrics of the configured model: one head, or three heads with the combined class.

    Three heads get metrics for ``mask``, ``gender``, ``age_group`` and the combined 0..17 class. With
    a regressed age, ``age_group`` is the group that age maps to, and ``age_mae`` and ``age_mse``
    (in years and squared years) are added.
    """
    if model.heads == "single":
        return EpochMetrics(num_classes, full)
    regression = ("age",) if model.age_head == "regression" else ()
    return EpochMetrics(dict(HEAD_SIZES), full, regression=regression)
