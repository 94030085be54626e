"""Distributed data parallel setup for ``torchrun``, and samplers that shard data across processes.

``torchrun --nproc-per-node N -m training train ...`` starts N processes and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each; a plain
``python -m training train`` runs as a single process with rank 0. The backend is NCCL when the run
uses CUDA and gloo on CPU. Process 0 alone writes files.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def read_env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group that torchrun describes in the environment, if there is one.

    ``device_type`` is ``"cuda"`` or ``"cpu"`` and selects the NCCL or gloo backend.
    """
    world_size = read_env_int("WORLD_SIZE", 1)
    context = DistributedContext(
        rank=read_env_int("RANK", 0), local_rank=read_env_int("LOCAL_RANK", 0), world_size=world_size
    )
    if not context.enabled or dist.is_initialized():
        return context
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(context.local_rank)
    dist.init_process_group(backend=backend)
    logger.info("process %d of %d joined the %s process group", context.rank, world_size, backend)
    return context


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(value: Any, source: int = 0) -> Any:
    """Return ``value`` from process ``source`` on every process (a no-op without a process group)."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def gather_objects(value: Any) -> list[Any]:
    """Return ``value`` from every process, in rank order."""
    if not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Return the element-wise sum of ``values`` over all processes."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_buffers(module: nn.Module, source: int = 0) -> None:
    """Copy buffers such as batch-norm running statistics from process ``source`` to all others.

    DDP broadcasts buffers at the start of each training forward pass, and each process then updates
    them with its own batch, so after the last step they differ between processes. Validation must
    use the buffers that process 0 saves in the checkpoint.
    """
    if not dist.is_initialized():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=source)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index starting at ``rank``, in order, with no padding.

    ``torch.utils.data.DistributedSampler`` repeats samples to give every process the same count,
    which would count those samples twice in validation metrics; this sampler never does.
    """

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class WeightedEpochSampler(Sampler[int]):
    """Draw indices with replacement, with probability proportional to ``weights``.

    The draws of an epoch depend only on ``seed`` and the epoch set with ``set_epoch``, so a resumed
    run draws what an uninterrupted one would. Each process takes its own slice of the same draws.
    ``num_samples`` is the total over all processes (default: the data set length).
    """

    def __init__(
        self,
        weights: Sequence[float],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_samples: int | None = None,
    ):
        self.weights = torch.as_tensor(list(weights), dtype=torch.float64)
        if self.weights.numel() == 0 or not bool((self.weights >= 0).all()) or self.weights.sum() <= 0:
            raise ValueError("sampling weights must be non-negative with a positive sum")
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        total = num_samples if num_samples is not None else len(self.weights)
        self.per_process = math.ceil(total / world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(
            self.weights, self.per_process * self.world_size, replacement=True, generator=generator
        )
        return iter(draws[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_process


def class_balanced_weights(targets: Sequence[int]) -> list[float]:
    """Return ``1 / count(class)`` for each sample, so every class is drawn equally often."""
    counts: dict[int, int] = {}
    for target in targets:
        counts[target] = counts.get(target, 0) + 1
    return [1.0 / counts[target] for target in targets]
