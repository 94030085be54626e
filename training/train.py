"""The ``train`` command: wires config, data, model, loop and checkpoints together.

A run writes ``runs/<name>/<timestamp>/``: ``config.yaml``, ``best.pt`` (best ``train.monitor``),
``last.pt``, ``metrics.csv``, ``train.log``, ``tensorboard/`` and, at the end, ``curves.png``.
``--resume .../last.pt`` continues that run in its folder. Under torchrun, process 0 alone writes.
"""

from __future__ import annotations

import logging
import math
import os
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import capture_rng_state, load_checkpoint, save_checkpoint
from training.config import Config, ConfigError, dump_config
from training.distributed import (
    DistributedContext,
    barrier,
    broadcast_buffers,
    broadcast_object,
    gather_objects,
    init_distributed,
    shutdown_distributed,
)
from training.engine import EpochResult, evaluate, train_one_epoch
from training.metrics import EpochMetrics, MetricsResult
from training.reporting import (
    append_metrics,
    open_tensorboard,
    plot_curves,
    read_metrics,
    truncate_metrics,
    write_tensorboard_row,
)
from training.resume import Progress, checkpoint_state, restore_trainer
from training.trainer import Trainer, build_trainer, resolve_device

logger = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matrix products on CUDA 10.2 and later.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def create_run_dir(config: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = config.train.output_dir / config.name / stamp
    suffix = 1
    while run_dir.exists():
        run_dir = config.train.output_dir / config.name / f"{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    return run_dir


def attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def monitor_direction(monitor: str, metrics: EpochMetrics) -> float:
    """Return +1 when a larger ``monitor`` is better, -1 for 'loss' and errors such as 'age_mae'.

    Raise ConfigError for a name that is not a validation metric.
    """
    allowed = ["loss", *metrics.names()]
    if monitor not in allowed:
        raise ConfigError(
            f"train.monitor {monitor!r} is not a validation metric; allowed: {', '.join(allowed)}"
        )
    return -1.0 if monitor.endswith(("loss", "_mae", "_mse")) else 1.0


def metrics_row(
    epoch: int, lr: float, result: EpochResult, val: dict[str, float], details: MetricsResult, class_names
) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": result.loss}
    row |= {f"train_{name}": value for name, value in result.metrics.items()}
    row |= {f"val_{name}": value for name, value in val.items()}
    for head, values in details.per_class_f1.items():
        names = class_names if head == "" and len(class_names) == len(values) else range(len(values))
        prefix = f"val_{head}_f1_" if head else "val_f1_"
        row |= {f"{prefix}{name}": value for name, value in zip(names, values, strict=True)}
    row |= {
        "images_per_second": result.images_per_second,
        "data_wait_share": result.data_wait_share,
        "seconds": result.seconds,
    }
    return row


def run_epoch(trainer: Trainer, epoch: int) -> tuple[float, EpochResult, dict[str, float], MetricsResult]:
    """Train and validate one epoch; return the epoch's starting lr, the train result and val metrics."""
    sampler = trainer.train_loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    lr = trainer.optimizer.param_groups[0]["lr"]
    result = train_one_epoch(
        trainer.model,
        trainer.criterion,
        trainer.optimizer,
        trainer.train_loader,
        trainer.device,
        epoch,
        trainer.options,
        scaler=trainer.scaler,
        lr_scheduler=trainer.lr_scheduler if trainer.per_step_scheduler else None,
        metrics=trainer.train_metrics,
    )
    if trainer.lr_scheduler is not None and not trainer.per_step_scheduler:
        trainer.lr_scheduler.step()
    broadcast_buffers(trainer.module)
    val, details = evaluate(
        trainer.module,
        trainer.criterion,
        trainer.val_loader,
        trainer.device,
        trainer.val_metrics,
        tta=trainer.config.train.tta,
        options=trainer.val_options,
    )
    return lr, result, val, details


def fit(trainer: Trainer, run_dir: Path, progress: Progress) -> Progress:
    """Run the remaining epochs, writing metrics and checkpoints from process 0."""
    config = trainer.config
    monitor = config.train.monitor
    direction = monitor_direction(monitor, trainer.val_metrics)
    writer = None
    if trainer.context.is_main and config.train.tensorboard:
        writer = open_tensorboard(
            run_dir / "tensorboard", purge_step=progress.epoch + 1 if progress.epoch else None
        )
    try:
        for epoch in range(progress.epoch + 1, config.train.epochs + 1):
            lr, result, val, details = run_epoch(trainer, epoch)
            progress.epoch = epoch
            progress.step += result.steps
            logger.info(
                "epoch %d/%d: %d train images, lr %.3e train_loss %.4f val_loss %.4f val_accuracy %.4f "
                "val_macro_f1 %.4f images/s %.1f data wait %.0f%%",
                *(epoch, config.train.epochs, result.images, lr, result.loss, val["loss"]),
                val.get("accuracy", math.nan),
                *(val.get("macro_f1", math.nan), result.images_per_second, 100 * result.data_wait_share),
            )
            rng_states = gather_objects(capture_rng_state())
            if not trainer.context.is_main:
                continue
            row = metrics_row(epoch, lr, result, val, details, trainer.class_names)
            append_metrics(run_dir / "metrics.csv", row)
            if writer is not None:
                write_tensorboard_row(writer, row, epoch)
            improved = direction * val[monitor] > progress.best_score
            if improved:
                progress.best_score = direction * val[monitor]
            state = checkpoint_state(trainer, progress, val, rng_states)
            save_checkpoint(state, run_dir / "last.pt")
            if improved:
                save_checkpoint(state, run_dir / "best.pt")
                logger.info("epoch %d: new best val_%s %.4f", epoch, monitor, val[monitor])
    finally:
        if writer is not None:
            writer.close()
    return progress


def prepare_run_dir(config: Config, resume: Path | None, context: DistributedContext) -> Path:
    """Create (or, on resume, reuse) the run folder on process 0 and share its path with the rest."""
    run_dir = None
    if context.is_main:
        run_dir = Path(resume).parent if resume is not None else create_run_dir(config)
        run_dir.mkdir(parents=True, exist_ok=True)
    return Path(broadcast_object(str(run_dir) if run_dir else None))


def train(config: Config, resume: Path | None = None) -> Path:
    """Train as configured and return the run folder.

    ``resume`` names a checkpoint of this config's run to continue from (``config`` should come from
    ``config_for_resume``); the run continues in the checkpoint's folder.
    """
    context = init_distributed(resolve_device(config.train.device).type)
    package_logger = logging.getLogger("training")
    previous_level = package_logger.level
    if not context.is_main:
        package_logger.setLevel(logging.WARNING)
    log_handler = None
    try:
        device = resolve_device(config.train.device, context)
        # Each process augments with its own random stream; DDP copies process 0's initial weights.
        seed_everything(config.seed + context.rank, config.train.deterministic)
        run_dir = prepare_run_dir(config, resume, context)
        if context.is_main:
            log_handler = attach_log_file(run_dir)
            dump_config(config, run_dir / "config.yaml")
        logger.info("run %s%s", run_dir, f", resuming from {resume}" if resume else "")
        trainer = build_trainer(config, context, device)
        progress = Progress()
        if resume is not None:
            progress = restore_trainer(trainer, load_checkpoint(resume, map_location=device), Path(resume))
            if context.is_main:
                dropped = truncate_metrics(run_dir / "metrics.csv", progress.epoch)
                if dropped:
                    logger.info("dropped %d metrics.csv rows written after epoch %d", dropped, progress.epoch)
        progress = fit(trainer, run_dir, progress)
        if context.is_main:
            rows = read_metrics(run_dir / "metrics.csv")
            plot_curves(rows, run_dir / "curves.png")
            best = progress.best_score * monitor_direction(config.train.monitor, trainer.val_metrics)
            logger.info("done: best val_%s %.4f, checkpoints in %s", config.train.monitor, best, run_dir)
        barrier()
        return run_dir
    finally:
        if log_handler is not None:
            logging.getLogger().removeHandler(log_handler)
            log_handler.close()
        package_logger.setLevel(previous_level)
        shutdown_distributed()
