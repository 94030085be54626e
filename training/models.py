"""Model creation through timm, with pretrained weights read from a local file only."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch.nn as nn

from training.config import ModelConfig

logger = logging.getLogger(__name__)


def create_model(config: ModelConfig, num_classes: int, in_chans: int) -> nn.Module:
    """Create a timm model with a new ``num_classes`` head and ``in_chans`` input channels.

    ``config.pretrained`` names a local weights file (``.safetensors``, ``.pth`` or ``.bin``); timm
    loads it and adapts the first convolution and the classifier to the shapes asked for. Nothing is
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
