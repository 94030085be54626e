"""Optimizer and learning-rate scheduler factories."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR, StepLR

from training.config import OptimizerConfig, SchedulerConfig


def create_optimizer(parameters, config: OptimizerConfig) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.name == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.name!r}; allowed: sgd, adam, adamw")


def create_scheduler(
    optimizer: torch.optim.Optimizer, config: SchedulerConfig, epochs: int
) -> LRScheduler | None:
    """Build a scheduler that is stepped once per epoch, or None for a constant learning rate."""
    if config.name == "none":
        return None
    if config.name == "steplr":
        return StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.name == "multisteplr":
        return MultiStepLR(optimizer, milestones=config.milestones, gamma=config.gamma)
    if config.name == "cosine":
        base_lr = optimizer.param_groups[0]["lr"]
        floor = config.min_lr / base_lr

        def factor(epoch: int) -> float:
            if epoch < config.warmup_epochs:
                return (epoch + 1) / (config.warmup_epochs + 1)
            progress = (epoch - config.warmup_epochs) / max(1, epochs - config.warmup_epochs)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        return LambdaLR(optimizer, factor)
    raise ValueError(f"unknown lr_scheduler {config.name!r}; allowed: none, steplr, multisteplr, cosine")
