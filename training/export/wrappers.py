"""Modules that put the input conversion inside the exported graph."""

from __future__ import annotations

import torch
import torch.nn as nn


class UInt8Input(nn.Module):
    """Wrap a model so it takes uint8 ``[N, H, W, C]`` and normalizes inside the graph."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", mean_t / std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (x / 255 - mean) / std, folded into one multiply and one subtract.
        x = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
        return self.model(x)
