"""Optimizer and learning-rate scheduler factories.

steplr and multisteplr step once per epoch. cosine (with linear warmup) and onecycle step once per
optimizer step, so their learning rate changes smoothly within an epoch and warmup can be shorter
than one epoch. ``scheduler_interval`` returns which of the two a config uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR, OneCycleLR, StepLR

from training.config import OptimizerConfig, SchedulerConfig

PER_STEP_SCHEDULERS = frozenset({"cosine", "onecycle"})


def create_optimizer(parameters: Iterable, config: OptimizerConfig) -> torch.optim.Optimizer:
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


def scheduler_interval(config: SchedulerConfig) -> Literal["epoch", "step"]:
    return "step" if config.name in PER_STEP_SCHEDULERS else "epoch"


def cosine_factor(step: int, warmup_steps: int, total_steps: int, floor: float) -> float:
    """Return the learning-rate multiplier at optimizer step ``step`` (0-based).

    During warmup it rises linearly to 1 at step ``warmup_steps - 1``. It then follows half a cosine
    from 1 down to ``floor``, which it reaches after ``total_steps`` steps.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def create_scheduler(
    optimizer: torch.optim.Optimizer, config: SchedulerConfig, epochs: int, steps_per_epoch: int
) -> LRScheduler | None:
    """Build the configured scheduler, or None for a constant learning rate.

    ``steps_per_epoch`` counts optimizer steps (micro-batches divided by ``accumulation_steps``,
    rounded up); the per-step schedulers use it for their length.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if config.name == "none":
        return None
    if config.name == "steplr":
        return StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.name == "multisteplr":
        return MultiStepLR(optimizer, milestones=config.milestones, gamma=config.gamma)
    total_steps = epochs * steps_per_epoch
    if config.name == "cosine":
        return create_cosine(optimizer, config, epochs, steps_per_epoch)
    if config.name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        # cycle_momentum=False keeps optimizer.momentum (and Adam's betas) as configured.
        return OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total_steps,
            pct_start=config.pct_start,
            div_factor=config.div_factor,
            final_div_factor=config.final_div_factor,
            cycle_momentum=False,
        )
    raise ValueError(
        f"unknown lr_scheduler {config.name!r}; allowed: none, steplr, multisteplr, cosine, onecycle"
    )


def create_cosine(
    optimizer: torch.optim.Optimizer, config: SchedulerConfig, epochs: int, steps_per_epoch: int
) -> LambdaLR:
    if config.warmup_epochs >= epochs:
        raise ValueError(
            f"lr_scheduler.warmup_epochs ({config.warmup_epochs}) must be less than train.epochs ({epochs})"
        )
    base_lr = optimizer.param_groups[0]["lr"]
    if config.min_lr > base_lr:
        raise ValueError(f"lr_scheduler.min_lr ({config.min_lr}) must not exceed optimizer.lr ({base_lr})")
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    floor = config.min_lr / base_lr
    return LambdaLR(optimizer, lambda step: cosine_factor(step, warmup_steps, total_steps, floor))
