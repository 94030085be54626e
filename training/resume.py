"""Checkpoint contents of a run, and the exact restore that ``--resume`` performs."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from training.checkpoint import check_resumable, restore_rng_state
from training.config import Config, ConfigError, apply_override, format_validation_error, parse_override
from training.optim import scheduler_interval
from training.trainer import Trainer

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """State that carries over epochs and into checkpoints."""

    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf  # monitor value times its direction, so larger is always better


def checkpoint_state(trainer: Trainer, progress: Progress, metrics: dict[str, float], rng_states) -> dict:
    return {
        "model": trainer.module.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict() if trainer.lr_scheduler else None,
        "grad_scaler": trainer.scaler.state_dict() if trainer.scaler else None,
        "epoch": progress.epoch,
        "step": progress.step,
        "rng_states": rng_states,
        "config": trainer.config.model_dump(mode="json"),
        "class_names": trainer.class_names,
        "metrics": {name: float(value) for name, value in metrics.items()},
        "monitor": trainer.config.train.monitor,
        "best_score": progress.best_score,
    }


def restore_trainer(trainer: Trainer, state: dict[str, Any], path: Path) -> Progress:
    """Load model, optimizer, scheduler, scaler and generator states from a checkpoint."""
    check_resumable(state, path)
    if list(state["class_names"]) != trainer.class_names:
        raise ConfigError(
            f"{path} was trained on classes {state['class_names']}, the data now has {trainer.class_names}"
        )
    trainer.module.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.lr_scheduler is not None and state.get("lr_scheduler") is not None:
        trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    if trainer.scaler is not None and state.get("grad_scaler"):
        trainer.scaler.load_state_dict(state["grad_scaler"])
    progress = Progress(epoch=int(state["epoch"]), step=int(state["step"]))
    if state.get("monitor") == trainer.config.train.monitor:
        progress.best_score = float(state.get("best_score", -math.inf))
    else:
        logger.warning(
            "train.monitor changed from %r to %r; the best checkpoint is chosen anew from epoch %d",
            *(state.get("monitor"), trainer.config.train.monitor, progress.epoch + 1),
        )
    rng_states = state["rng_states"]
    if len(rng_states) == trainer.context.world_size:
        restore_rng_state(rng_states[trainer.context.rank])
    else:
        logger.warning(
            "%s was written by %d process(es), this run has %d; random augmentations will differ "
            "from an uninterrupted run",
            *(path, len(rng_states), trainer.context.world_size),
        )
    return progress


def config_for_resume(state: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Return the checkpoint's resolved config with ``key.path=value`` overrides applied."""
    data = copy.deepcopy(state["config"])
    for text in overrides:
        key_path, value = parse_override(text)
        apply_override(data, key_path, value)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, None)) from exc
    saved = Config.model_validate(state["config"])
    epoch = int(state.get("epoch", 0))
    if epoch >= config.train.epochs:
        raise ConfigError(
            f"the checkpoint is at epoch {epoch} and train.epochs is {config.train.epochs}; "
            f"raise it, e.g. --set train.epochs={epoch + 5}"
        )
    if config.train.epochs != saved.train.epochs and scheduler_interval(config.lr_scheduler) == "step":
        raise ConfigError(
            f"train.epochs cannot change on resume with lr_scheduler {config.lr_scheduler.name!r}, whose "
            f"length is fixed in optimizer steps (saved {saved.train.epochs}, "
            f"requested {config.train.epochs})"
        )
    return config
