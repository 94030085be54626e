"""One training epoch and one evaluation pass.

Models may return one logits tensor or a dict of head logits. With a dict, targets come as a dict
keyed the same way, and the criterion and ``EpochMetrics`` take both forms.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.distributed import all_reduce_sum
from training.metrics import EpochMetrics, MetricsResult
from training.models import class_logits

logger = logging.getLogger(__name__)


@dataclass
class LoopOptions:
    accumulation_steps: int = 1
    log_interval: int = 10
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    limit_batches: int | None = None
    show_progress: bool = True


@dataclass
class EpochResult:
    """Totals of one training epoch over all processes; ``seconds`` and ``data_seconds`` are this
    process's wall time and its time spent waiting for the data loader."""

    loss: float
    images: int
    steps: int
    seconds: float
    data_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    @property
    def data_wait_share(self) -> float:
        return self.data_seconds / max(self.seconds, 1e-9)


def move_to_device(value, device: torch.device, channels_last: bool = False):
    """Move a tensor or a dict of tensors to ``device``; 4-D tensors optionally to channels_last."""
    if isinstance(value, Mapping):
        return {key: move_to_device(item, device, channels_last) for key, item in value.items()}
    value = value.to(device, non_blocking=True)
    if channels_last and value.ndim == 4:
        value = value.contiguous(memory_format=torch.channels_last)
    return value


def count_samples(targets) -> int:
    if isinstance(targets, Mapping):
        return next(iter(targets.values())).shape[0]
    return targets.shape[0]


def map_outputs(function: Callable[[torch.Tensor], torch.Tensor], outputs):
    if isinstance(outputs, Mapping):
        return {key: function(value) for key, value in outputs.items()}
    return function(outputs)


def limited_length(data_loader: DataLoader, limit: int | None) -> int:
    return len(data_loader) if limit is None else min(len(data_loader), limit)


def timed_batches(data_loader: DataLoader, limit: int | None, wait: list[float]) -> Iterator:
    """Yield the batches, adding the seconds spent waiting for each to ``wait[0]``."""
    iterator = iter(itertools.islice(data_loader, limit))
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        wait[0] += time.perf_counter() - start
        yield batch


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def raise_if_not_finite(value: float, epoch: int, step: int, index: int, num_batches: int) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(
            f"loss is {value} at epoch {epoch}, step {step} (micro-batch {index + 1} of {num_batches}); "
            "lower optimizer.lr, try train.amp=off, or check the data for NaN values"
        )


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    device: torch.device,
    epoch: int,
    options: LoopOptions | None = None,
    scaler: torch.amp.GradScaler | None = None,
    lr_scheduler: LRScheduler | None = None,
    metrics: EpochMetrics | None = None,
) -> EpochResult:
    """Train for one epoch with gradient accumulation over ``accumulation_steps`` micro-batches.

    Each micro-batch loss is divided by the number of micro-batches in its accumulation group before
    ``backward()``, so a group's gradient is the mean of its micro-batch gradients. The last group of
    an epoch may be shorter; it is divided by its own count and still steps. ``lr_scheduler``, when
    given, is stepped after every optimizer step (cosine, onecycle).
    """
    options = options or LoopOptions()
    model.train()
    if metrics is not None:
        metrics.reset()
    num_batches = limited_length(data_loader, options.limit_batches)
    accumulation = options.accumulation_steps
    total_steps = math.ceil(num_batches / accumulation)
    loss_sum, seen, wait = 0.0, 0, [0.0]
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)

    batches = timed_batches(data_loader, options.limit_batches, wait)
    disable = None if options.show_progress else True  # None: tqdm hides itself off a terminal
    progress = tqdm(batches, total=num_batches, desc=f"epoch {epoch}", leave=False, disable=disable)
    for index, (images, targets) in enumerate(progress):
        step = index // accumulation + 1
        group_size = min(accumulation, num_batches - (step - 1) * accumulation)
        steps_now = index + 1 == (step - 1) * accumulation + group_size
        targets = move_to_device(targets, device)
        logits, loss = backward_micro_batch(
            model, criterion, move_to_device(images, device, options.channels_last), targets, device,
            amp_dtype=options.amp_dtype, scaler=scaler, divisor=group_size, sync_gradients=steps_now,
        )  # fmt: skip
        raise_if_not_finite(loss, epoch, step, index, num_batches)

        batch_size = count_samples(targets)
        loss_sum += loss * batch_size
        seen += batch_size
        if metrics is not None:
            metrics.update(logits, targets)
        if steps_now:
            optimizer_step(optimizer, scaler, lr_scheduler)
            rate = seen / (time.perf_counter() - start)
            lr = optimizer.param_groups[0]["lr"]
            progress.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
            if step % options.log_interval == 0 or step == total_steps:
                logger.info(
                    "epoch %d step %d/%d loss %.4f lr %.3e images/s %.1f data wait %.0f%%",
                    *(epoch, step, total_steps, loss_sum / seen, lr, rate),
                    100 * wait[0] / (time.perf_counter() - start),
                )
    seconds = time.perf_counter() - start
    loss_total, images_total = all_reduce_sum([loss_sum, seen], device)
    result = EpochResult(
        loss=loss_total / max(images_total, 1),
        images=int(images_total),
        steps=total_steps,
        seconds=seconds,
        data_seconds=wait[0],
    )
    if metrics is not None:
        # Under DDP every process must call compute(), because it gathers the states of all.
        result.metrics = metrics.compute().scalars
    return result


def backward_micro_batch(
    model: nn.Module,
    criterion: nn.Module,
    images: torch.Tensor,
    targets,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
    divisor: int,
    sync_gradients: bool,
):
    """Run forward and ``backward(loss / divisor)``; return the detached logits and the loss value.

    The caller checks the loss for NaN after ``backward()``. That is harmless, because a non-finite
    loss stops the run before the optimizer steps.
    """
    # DDP all-reduces gradients in every backward(); no_sync skips that until the group's last one.
    if isinstance(model, DistributedDataParallel) and not sync_gradients:
        context = model.no_sync()
    else:
        context = contextlib.nullcontext()
    with context:
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = criterion(logits, targets)
        scaled = loss / divisor
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return map_outputs(torch.Tensor.detach, logits), loss.detach().float().item()


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    lr_scheduler: LRScheduler | None,
) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if lr_scheduler is not None:
        lr_scheduler.step()


def flip_tta(model: nn.Module, images: torch.Tensor):
    """Return log of the mean softmax over the image and its horizontal flip, as logits.

    ``softmax(log p) = p``, so the result works as logits for both the loss and the metrics. A
    regression output ``[N]`` (a value per image, such as an age) is the mean of the two values.
    """
    plain = model(images)
    flipped = model(images.flip(-1))

    def average(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if pair[0].ndim == 1:
            return (pair[0].float() + pair[1].float()) / 2
        stacked = torch.stack([F.log_softmax(pair[0].float(), 1), F.log_softmax(pair[1].float(), 1)])
        return torch.logsumexp(stacked, dim=0) - math.log(2.0)

    if isinstance(plain, Mapping):
        return {key: average((plain[key], flipped[key])) for key in plain}
    return average((plain, flipped))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    data_loader: DataLoader,
    device: torch.device,
    metrics: EpochMetrics,
    tta: str = "none",
    options: LoopOptions | None = None,
) -> tuple[dict[str, float], MetricsResult]:
    """Return the mean loss and the metrics over the whole loader (and over all processes).

    Runs under ``model.eval()`` and ``torch.no_grad()``. ``tta="hflip"`` averages the softmax of each
    image and its horizontal flip.
    """
    if tta not in ("none", "hflip"):
        raise ValueError(f"unknown tta {tta!r}; allowed: none, hflip")
    options = options or LoopOptions()
    model.eval()
    metrics.reset()
    loss_sum, seen = 0.0, 0
    for images, targets in itertools.islice(data_loader, options.limit_batches):
        images = move_to_device(images, device, options.channels_last)
        targets = move_to_device(targets, device)
        with autocast(device, options.amp_dtype):
            logits = flip_tta(model, images) if tta == "hflip" else model(images)
            loss = criterion(logits, targets)
        batch_size = count_samples(targets)
        loss_sum += loss.float().item() * batch_size
        seen += batch_size
        metrics.update(logits, targets)
    loss_total, images_total = all_reduce_sum([loss_sum, seen], device)
    if images_total == 0:
        raise ValueError("the evaluation data loader yielded no images")
    result = metrics.compute()
    return {"loss": loss_total / images_total, **result.scalars}, result


@torch.no_grad()
def predict_logits(model: nn.Module, data_loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Return the class logits of every image in loader order.

    A three-head model's dict becomes its combined class scores (``training.models.class_logits``).
    """
    model.eval()
    outputs = [class_logits(model(images.to(device))).float().cpu() for images, _ in data_loader]
    return torch.cat(outputs)
