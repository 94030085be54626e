"""Model creation through timm, with pretrained weights read from a local file only.

``model.heads: single`` is a timm classifier over all classes. ``three`` is one timm backbone with
three linear heads for the mask-competition attributes (mask 3, gender 2, age). Its combined 0..17
class is decoded with the label formula ``mask * 6 + gender * 3 + age_group``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.config import ModelConfig
from training.data.labels import DEFAULT_AGE_CUTOFFS, HEAD_SIZES, NUM_CLASSES

logger = logging.getLogger(__name__)

# Heads in the order of the label formula; the combined class is their mixed-radix number.
CLASS_HEADS = ("mask", "gender", "age_group")
AGE_REGRESSION = "age"


def create_timm_model(config: ModelConfig, num_classes: int, in_chans: int) -> nn.Module:
    """Create a timm model; ``num_classes=0`` returns the pooled features without a classifier.

    ``config.pretrained`` names a local weights file (``.safetensors``, ``.pth`` or ``.bin``); timm
    loads it and adapts the first convolution and the classifier to the requested shapes. Nothing is
    fetched from a hub.
    """
    if not timm.is_model(config.name):
        close = timm.list_models(f"*{config.name.split('_')[0]}*")[:8]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model {config.name!r}{hint}")

    kwargs = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": config.drop_rate}
    if config.pretrained is None:
        return timm.create_model(config.name, pretrained=False, **kwargs)

    weights = Path(config.pretrained)
    if not weights.is_file():
        raise FileNotFoundError(
            f"model.pretrained: weights file not found: {weights}. Download the weights for "
            f"{config.name!r} once on a machine with network access and pass the local path."
        )
    logger.info("loading pretrained weights for %s from %s", config.name, weights)
    return timm.create_model(
        config.name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, **kwargs
    )


def create_model(
    config: ModelConfig,
    num_classes: int,
    in_chans: int,
    age_cutoffs: tuple[int, int] = DEFAULT_AGE_CUTOFFS,
) -> nn.Module:
    """Create the configured model: a timm classifier, or ``ThreeHeadModel`` for ``heads: three``.

    ``age_cutoffs`` (``data.age_cutoffs``) map a regressed age to its group.
    """
    if config.heads == "single":
        return create_timm_model(config, num_classes, in_chans)
    if num_classes != NUM_CLASSES:
        raise ValueError(
            f"model.heads three decodes to the {NUM_CLASSES} mask-competition classes, but the data has "
            f"{num_classes}; use data.dataset mask or model.heads single"
        )
    backbone = create_timm_model(config, 0, in_chans)
    return ThreeHeadModel(backbone, config.age_head, age_cutoffs)


def age_group_scores(age: torch.Tensor, boundaries: tuple[float, float]) -> torch.Tensor:
    """Return ``[N, 3]`` age-group scores of ages in years: minus the distance to each group's interval.

    The groups are ``[0, b0)``, ``[b0, b1)`` and ``[b1, inf)`` with ``boundaries`` ``(b0, b1)``. The
    group that contains the age scores 0 and the others score below it, so the argmax is that group.
    An age exactly on a boundary goes to the lower group, because argmax returns the first maximum.
    """
    low, high = boundaries
    below_low = torch.relu(age - low)
    above_low = torch.relu(low - age)
    below_high = torch.relu(age - high)
    above_high = torch.relu(high - age)
    return torch.stack([-below_low, -(above_low + below_high), -above_high], dim=1)


class ThreeHeadModel(nn.Module):
    """A timm feature extractor with mask (3), gender (2) and age heads.

    ``forward`` returns a dict of head outputs: ``mask`` ``[N, 3]`` and ``gender`` ``[N, 2]`` logits,
    and ``age_group`` ``[N, 3]`` logits. With ``age_head="regression"`` it also returns ``age``
    ``[N]`` in years, and ``age_group`` contains ``age_group_scores`` of that age, so metrics and
    decoding treat both kinds of age head alike. The regressed age is compared with the cut-offs
    minus half a year, which maps it to the group of the nearest whole year (29.4 -> below 30).
    """

    # TorchScript compiles properties unless listed here; head_names is for Python callers only.
    __jit_unused_properties__ = ["head_names"]

    def __init__(
        self,
        backbone: nn.Module,
        age_head: str = "classification",
        age_cutoffs: tuple[int, int] = DEFAULT_AGE_CUTOFFS,
    ):
        super().__init__()
        if age_head not in ("classification", "regression"):
            raise ValueError(f"age_head must be 'classification' or 'regression', got {age_head!r}")
        features = int(backbone.num_features)
        self.backbone = backbone
        self.mask_head = nn.Linear(features, HEAD_SIZES["mask"])
        self.gender_head = nn.Linear(features, HEAD_SIZES["gender"])
        self.regression = age_head == "regression"
        self.age_head = nn.Linear(features, 1 if self.regression else HEAD_SIZES["age_group"])
        self.age_cutoffs = (int(age_cutoffs[0]), int(age_cutoffs[1]))
        self.age_boundaries = (age_cutoffs[0] - 0.5, age_cutoffs[1] - 0.5)

    @property
    def head_names(self) -> tuple[str, ...]:
        """Names of the outputs that a loss trains, in the order of the label formula."""
        return ("mask", "gender", AGE_REGRESSION if self.regression else "age_group")

    @torch.no_grad()
    def init_age_bias(self, mean_age: float) -> None:
        """Start the regressed age at ``mean_age`` years, so the first steps do not chase the offset."""
        if self.regression:
            self.age_head.bias.fill_(float(mean_age))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        outputs = {"mask": self.mask_head(features), "gender": self.gender_head(features)}
        age = self.age_head(features)
        if self.regression:
            years = age.squeeze(1)
            outputs["age"] = years
            outputs["age_group"] = age_group_scores(years.float(), self.age_boundaries)
        else:
            outputs["age_group"] = age
        return outputs


def combined_logits(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return ``[N, 18]`` class scores: the sum of the heads' log-softmax for each combination.

    Column ``mask * 6 + gender * 3 + age_group`` is ``log p(mask) + log p(gender) +
    log p(age_group)``, so its softmax is the product of the head probabilities and its argmax is the
    class that ``decode_classes`` returns.
    """
    mask = F.log_softmax(outputs["mask"].float(), dim=1)
    gender = F.log_softmax(outputs["gender"].float(), dim=1)
    age_group = F.log_softmax(outputs["age_group"].float(), dim=1)
    joint = (mask.unsqueeze(2) + gender.unsqueeze(1)).flatten(1)
    return (joint.unsqueeze(2) + age_group.unsqueeze(1)).flatten(1)


def decode_classes(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return the 0..17 class of each row from the heads' argmax: ``mask * 6 + gender * 3 + age_group``."""
    combined = torch.zeros_like(outputs["mask"][:, 0], dtype=torch.long)
    for name in CLASS_HEADS:
        combined = combined * HEAD_SIZES[name] + outputs[name].argmax(dim=1)
    return combined


def class_logits(outputs) -> torch.Tensor:
    """Return ``[N, num_classes]`` logits of a single-head tensor or of a three-head dict."""
    if isinstance(outputs, dict):
        return combined_logits(outputs)
    return outputs
