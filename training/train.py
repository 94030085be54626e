"""The ``train`` command: wires config, data, model, loop and checkpoints together."""

from __future__ import annotations

import csv
import logging
import random
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from training.checkpoint import save_checkpoint
from training.config import Config, dump_config
from training.data import build_data
from training.engine import evaluate, train_one_epoch
from training.models import create_model
from training.optim import create_optimizer, create_scheduler

logger = logging.getLogger(__name__)

MONITOR = "macro_f1"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
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


def build_loaders(config: Config, data) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        data.train,
        batch_size=config.data.batch_size,
        shuffle=True,
        num_workers=config.data.num_workers,
        generator=generator,
        drop_last=False,
    )
    val_loader = DataLoader(
        data.val, batch_size=config.data.batch_size, shuffle=False, num_workers=config.data.num_workers
    )
    return train_loader, val_loader


def train(config: Config) -> Path:
    """Train as the config says and return the run folder."""
    seed_everything(config.seed, config.train.deterministic)
    device = resolve_device(config.train.device)
    run_dir = create_run_dir(config)
    log_handler = attach_log_file(run_dir)
    try:
        dump_config(config, run_dir / "config.yaml")
        data = build_data(config)
        num_classes = len(data.class_names)
        logger.info(
            "run %s: %d train / %d val images, %d classes, device %s",
            run_dir,
            len(data.train),
            len(data.val),
            num_classes,
            device,
        )
        train_loader, val_loader = build_loaders(config, data)

        in_chans = 1 if config.data.color_mode == "L" else 3
        model = create_model(config.model, num_classes, in_chans).to(device)
        criterion = nn.CrossEntropyLoss(label_smoothing=config.loss.label_smoothing)
        optimizer = create_optimizer(model.parameters(), config.optimizer)
        lr_scheduler = create_scheduler(optimizer, config.lr_scheduler, config.train.epochs)

        best_score = -float("inf")
        metrics_path = run_dir / "metrics.csv"
        for epoch in range(1, config.train.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            result = train_one_epoch(
                model,
                criterion,
                optimizer,
                train_loader,
                device,
                epoch,
                config.train.accumulation_steps,
                config.train.log_interval,
            )
            if lr_scheduler is not None:
                lr_scheduler.step()
            val = evaluate(model, criterion, val_loader, device, num_classes)
            row = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": result.loss,
                "images_per_second": result.images_per_second,
                **{f"val_{k}": v for k, v in val.items()},
            }
            append_metrics(metrics_path, row)
            logger.info(
                "epoch %d/%d lr %.3e train_loss %.4f val_loss %.4f val_accuracy %.4f val_macro_f1 %.4f",
                epoch,
                config.train.epochs,
                lr,
                result.loss,
                val["loss"],
                val["accuracy"],
                val["macro_f1"],
            )

            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler else None,
                "epoch": epoch,
                "config": config.model_dump(mode="json"),
                "class_names": list(data.class_names),
                "metrics": {k: float(v) for k, v in val.items()},
            }
            save_checkpoint(state, run_dir / "last.pt")
            if val[MONITOR] > best_score:
                best_score = val[MONITOR]
                save_checkpoint(state, run_dir / "best.pt")
                logger.info("epoch %d: new best val_%s %.4f", epoch, MONITOR, best_score)
        logger.info("done: best val_%s %.4f, checkpoints in %s", MONITOR, best_score, run_dir)
        return run_dir
    finally:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()


def append_metrics(path: Path, row: dict) -> None:
    new_file = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new_file:
            writer.writeheader()
        writer.writerow(row)
