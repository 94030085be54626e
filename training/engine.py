"""One training epoch and one evaluation pass."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.metrics import build_metrics, compute_metrics, update_metrics

logger = logging.getLogger(__name__)


@dataclass
class EpochResult:
    loss: float
    images_per_second: float


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    device: torch.device,
    epoch: int,
    accumulation_steps: int = 1,
    log_interval: int = 10,
) -> EpochResult:
    """Train for one epoch with gradient accumulation over ``accumulation_steps`` micro-batches.

    Each micro-batch loss is divided by the size of its accumulation group before ``backward()``, so
    a group's gradient is the mean over its micro-batches. The last group of an epoch may be shorter
    and is divided by its own size, so it still steps with a correctly scaled gradient.
    """
    model.train()
    num_batches = len(data_loader)
    total_steps = -(-num_batches // accumulation_steps)
    loss_sum = 0.0
    seen = 0
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)

    progress = tqdm(data_loader, desc=f"epoch {epoch}", leave=False, disable=None)
    for index, (images, targets) in enumerate(progress):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        group_start = (index // accumulation_steps) * accumulation_steps
        group_size = min(accumulation_steps, num_batches - group_start)

        logits = model(images)
        loss = criterion(logits, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {epoch}, batch {index + 1}/{num_batches}; "
                "lower optimizer.lr or check the data"
            )
        (loss / group_size).backward()

        batch_size = images.shape[0]
        loss_sum += loss.item() * batch_size
        seen += batch_size
        if index + 1 == group_start + group_size:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step = index // accumulation_steps + 1
            lr = optimizer.param_groups[0]["lr"]
            rate = seen / (time.perf_counter() - start)
            progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
            if step % log_interval == 0 or step == total_steps:
                logger.info(
                    "epoch %d step %d/%d loss %.4f lr %.3e images/s %.1f",
                    epoch,
                    step,
                    total_steps,
                    loss_sum / seen,
                    lr,
                    rate,
                )
    elapsed = time.perf_counter() - start
    return EpochResult(loss=loss_sum / max(seen, 1), images_per_second=seen / max(elapsed, 1e-9))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    data_loader: DataLoader,
    device: torch.device,
    num_classes: int,
) -> dict[str, float]:
    """Return the mean loss and the epoch-level metrics over the whole data loader."""
    model.eval()
    metrics = build_metrics(num_classes).to(device)
    loss_sum = 0.0
    seen = 0
    for images, targets in data_loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        logits = model(images)
        loss_sum += criterion(logits, targets).item() * images.shape[0]
        seen += images.shape[0]
        update_metrics(metrics, logits, targets)
    return {"loss": loss_sum / max(seen, 1), **compute_metrics(metrics)}


@torch.no_grad()
def predict_logits(model: nn.Module, data_loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Return the logits of every image in loader order."""
    model.eval()
    outputs = [model(images.to(device)).float().cpu() for images, _ in data_loader]
    return torch.cat(outputs)
