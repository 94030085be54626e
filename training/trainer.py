"""Build everything a training run needs before its first epoch: device, data loaders, model,
criterion, optimizer, scheduler and mixed precision."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from training.config import Config, ConfigError
from training.data import DataBundle, build_data
from training.data.datasets import TargetMode
from training.distributed import (
    DistributedContext,
    ShardSampler,
    WeightedEpochSampler,
    class_balanced_weights,
)
from training.engine import LoopOptions
from training.losses import build_criterion, build_heads_criterion, resolve_class_weights
from training.metrics import EpochMetrics, build_epoch_metrics
from training.models import ThreeHeadModel, create_model
from training.optim import create_optimizer, create_scheduler, scheduler_interval

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, context: DistributedContext | None = None) -> torch.device:
    """Return the device for ``train.device``; under torchrun each process takes ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available; use 'cpu' or 'auto'")
    if device.type == "cuda" and context is not None and context.enabled:
        device = torch.device("cuda", context.local_rank)
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for ``train.amp``, or None for fp32 (always on CPU)."""
    if amp == "off":
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown train.amp {amp!r}; allowed: off, bf16, fp16")
    if device.type != "cuda":
        logger.info("train.amp=%s applies to CUDA only; training on %s in fp32", amp, device)
        return None
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.amp=bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16")
    return AMP_DTYPES[amp]


def build_train_sampler(config: Config, dataset, context: DistributedContext) -> Sampler:
    """Return a sampler whose order depends only on the seed and the epoch, so resume is exact."""
    if config.train.sampler == "weighted":
        weights = class_balanced_weights(dataset.targets)
        return WeightedEpochSampler(weights, config.seed, context.rank, context.world_size)
    return DistributedSampler(
        dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=config.seed
    )


def build_loaders(
    config: Config, data, context: DistributedContext, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    common = {
        "batch_size": config.data.batch_size,
        "num_workers": config.data.num_workers,
        "pin_memory": device.type == "cuda",
    }
    train_sampler = build_train_sampler(config, data.train, context)
    train_loader = DataLoader(data.train, sampler=train_sampler, drop_last=False, **common)
    val_sampler = ShardSampler(len(data.val), context.rank, context.world_size)
    val_loader = DataLoader(data.val, sampler=val_sampler, **common)
    return train_loader, val_loader


@dataclass
class Trainer:
    """Everything built before the first epoch."""

    config: Config
    context: DistributedContext
    device: torch.device
    class_names: list[str]
    model: nn.Module  # wrapped in DistributedDataParallel under torchrun
    module: nn.Module  # the bare model, whose state_dict is saved
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: LRScheduler | None
    per_step_scheduler: bool
    scaler: torch.amp.GradScaler | None
    train_loader: DataLoader
    val_loader: DataLoader
    train_metrics: EpochMetrics
    val_metrics: EpochMetrics
    options: LoopOptions
    val_options: LoopOptions


def target_mode(config: Config) -> TargetMode:
    """Return the data targets the model trains on; three heads need the mask data's attribute labels."""
    if config.model.heads == "single":
        return "class"
    if config.data.dataset != "mask":
        raise ConfigError(
            f"model.heads three needs per-attribute labels, which only data.dataset mask has; got "
            f"data.dataset {config.data.dataset!r}. Set data.dataset=mask or model.heads=single"
        )
    return "heads"


def build_train_criterion(config: Config, data: DataBundle, num_classes: int) -> nn.Module:
    """Create the loss of the configured model, with class weights from the training split."""
    if config.model.heads == "three":
        head_targets = {
            name: [getattr(sample.labels, name) for sample in data.train.samples]
            for name in ("mask", "gender", "age_group")
        }
        return build_heads_criterion(config.loss, config.model, head_targets)
    class_weights = resolve_class_weights(config.loss, num_classes, data.train.targets)
    if class_weights is not None:
        logger.info("class weights: %s", [round(w, 4) for w in class_weights.tolist()])
    return build_criterion(config.loss, num_classes, class_weights)


def build_model(config: Config, num_classes: int, device: torch.device) -> tuple[nn.Module, bool]:
    """Return the model on ``device`` and whether it uses channels_last."""
    in_chans = 1 if config.data.color_mode == "L" else 3
    model = create_model(config.model, num_classes, in_chans, config.data.age_cutoffs).to(device)
    channels_last = config.train.channels_last and device.type == "cuda"
    if config.train.channels_last and not channels_last:
        logger.info("train.channels_last applies to CUDA only; training on %s keeps NCHW", device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def build_trainer(config: Config, context: DistributedContext, device: torch.device) -> Trainer:
    data = build_data(config, target_mode(config))
    num_classes = len(data.class_names)
    logger.info(
        "%d train / %d val images, %d classes, device %s, %d process(es)",
        *(len(data.train), len(data.val), num_classes, device, context.world_size),
    )
    train_loader, val_loader = build_loaders(config, data, context, device)
    module, channels_last = build_model(config, num_classes, device)
    if isinstance(module, ThreeHeadModel) and module.regression:
        module.init_age_bias(sum(sample.labels.age for sample in data.train.samples) / len(data.train))
    model = module
    if context.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(module, device_ids=device_ids)

    criterion = build_train_criterion(config, data, num_classes).to(device)
    optimizer = create_optimizer(module.parameters(), config.optimizer)
    train_cfg = config.train
    micro_batches = (
        len(train_loader)
        if train_cfg.limit_train_batches is None
        else min(len(train_loader), train_cfg.limit_train_batches)
    )
    steps_per_epoch = math.ceil(micro_batches / train_cfg.accumulation_steps)
    lr_scheduler = create_scheduler(optimizer, config.lr_scheduler, train_cfg.epochs, steps_per_epoch)
    amp_dtype = resolve_amp(train_cfg.amp, device)
    # NOTE: the test suite runs on CPU only, so autocast, the grad scaler, channels_last and NCCL
    # are exercised there only up to choosing the settings.
    scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None
    options = LoopOptions(
        accumulation_steps=train_cfg.accumulation_steps,
        log_interval=train_cfg.log_interval,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        limit_batches=train_cfg.limit_train_batches,
        show_progress=context.is_main,
    )
    return Trainer(
        config=config,
        context=context,
        device=device,
        class_names=list(data.class_names),
        model=model,
        module=module,
        criterion=criterion,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        per_step_scheduler=scheduler_interval(config.lr_scheduler) == "step",
        scaler=scaler,
        train_loader=train_loader,
        val_loader=val_loader,
        train_metrics=build_epoch_metrics(config.model, num_classes, full=False).to(device),
        val_metrics=build_epoch_metrics(config.model, num_classes).to(device),
        options=options,
        val_options=LoopOptions(
            amp_dtype=amp_dtype, channels_last=channels_last, limit_batches=train_cfg.limit_val_batches
        ),
    )
