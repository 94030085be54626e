"""onnxruntime execution providers and session options, from the environment.

The settings and what they set (``ENV_NAMES`` maps each field to its variable):

- ``ORT_PROVIDERS``: comma-separated providers in priority order, as short names (``cuda``, ``cpu``,
  ``tensorrt``) or onnxruntime's names (``CUDAExecutionProvider``). Default ``auto``: CUDA then CPU
  when onnxruntime has the CUDA provider and the driver reports a GPU, else CPU.
- ``REQUIRE_GPU=1``: the service does not start unless the CUDA provider is really active in the
  session. onnxruntime falls back to the CPU with only a log line when the CUDA libraries fail to load.
- ``ORT_INTRA_OP_THREADS``: threads of one onnxruntime call. Default: the usable CPU cores divided by
  the model workers, so that workers do not oversubscribe the cores.
- ``ORT_INTER_OP_THREADS``: threads across independent graph nodes (onnxruntime's default, 0).
- ``ORT_GRAPH_OPTIMIZATION``: ``disable``, ``basic``, ``extended`` or ``all`` (default).
- ``MODEL_WORKERS``: model processes. Default: one per GPU when CUDA is used, else 1.
- ``CUDA_DEVICE_ID``: the GPU of a single worker; by default worker ``i`` (from 1) takes GPU ``i - 1``.
- ``ORT_CUDNN_CONV_ALGO_SEARCH``: ``EXHAUSTIVE`` (default), ``HEURISTIC`` or ``DEFAULT``.
- ``ORT_IO_BINDING``: bind inputs and outputs to the session's device before each run (default on
  with CUDA, off on the CPU).
- ``WARMUP_BATCH_SIZES``: ``all`` warms up every batch size from 1 to ``MAX_BATCH_SIZE`` at startup,
  ``ends`` warms up 1 and ``MAX_BATCH_SIZE``. Default ``all`` with CUDA (cuDNN picks convolution
  algorithms per input shape on the first run) and ``ends`` on the CPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.settings import read_env_model

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
PROVIDER_ALIASES = {
    "cuda": CUDA_PROVIDER,
    "cpu": CPU_PROVIDER,
    "tensorrt": "TensorrtExecutionProvider",
}
ENV_NAMES = {
    "providers": "ORT_PROVIDERS",
    "require_gpu": "REQUIRE_GPU",
    "intra_op_threads": "ORT_INTRA_OP_THREADS",
    "inter_op_threads": "ORT_INTER_OP_THREADS",
    "graph_optimization": "ORT_GRAPH_OPTIMIZATION",
    "model_workers": "MODEL_WORKERS",
    "device_id": "CUDA_DEVICE_ID",
    "cudnn_conv_algo_search": "ORT_CUDNN_CONV_ALGO_SEARCH",
    "io_binding": "ORT_IO_BINDING",
    "warmup_batch_sizes": "WARMUP_BATCH_SIZES",
}
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


class GpuRequiredError(RuntimeError):
    """Raised when ``REQUIRE_GPU=1`` and the CUDA provider is not, or would not be, active."""


class ExecutionSettings(BaseModel):
    """How onnxruntime runs the graph; see the module docstring for each variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    providers: list[str] | None = Field(default=None, description="None: CUDA when usable, else CPU")
    require_gpu: bool = False
    intra_op_threads: int | None = Field(default=None, gt=0)
    inter_op_threads: int | None = Field(default=None, ge=0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    model_workers: int | None = Field(default=None, gt=0)
    device_id: int | None = Field(default=None, ge=0)
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE"
    io_binding: bool | None = Field(default=None, description="None: on with CUDA, off on the CPU")
    warmup_batch_sizes: Literal["all", "ends"] | None = Field(
        default=None, description="None: all with CUDA, ends on the CPU"
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        names = [name.strip() for name in value.split(",") if name.strip()]
        if names == ["auto"]:
            return None
        resolved = []
        for name in names:
            full = PROVIDER_ALIASES.get(name.lower(), name)
            if not full.endswith("ExecutionProvider"):
                allowed = ", ".join([*PROVIDER_ALIASES, "auto"])
                raise ValueError(f"unknown provider {name!r}; use {allowed} or an onnxruntime provider name")
            resolved.append(full)
        if not resolved:
            raise ValueError("lists no provider; use auto, or names such as cuda,cpu")
        return resolved

    @field_validator("cudnn_conv_algo_search", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def from_env(cls, environ=None) -> ExecutionSettings:
        return read_env_model(cls, ENV_NAMES, "execution setting", environ)


def cuda_device_count() -> int:
    """Count CUDA devices through the driver library, or return 0 when there is no driver.

    onnxruntime-gpu lists the CUDA provider as available even on a machine with no GPU, and then
    logs a stack of errors when a session asks for it. Asking the driver first avoids both.
    """
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    if libcuda.cuInit(0) != 0:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(settings: ExecutionSettings, available: list[str], gpu_count: int) -> list[str]:
    """Return the providers to request, in priority order."""
    if settings.providers is not None:
        return list(settings.providers)
    if CUDA_PROVIDER in available and gpu_count > 0:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def check_gpu_prerequisites(settings: ExecutionSettings, available: list[str], gpu_count: int) -> None:
    """Raise GpuRequiredError when ``REQUIRE_GPU=1`` cannot be met, before any session is made."""
    if not settings.require_gpu:
        return
    if settings.providers is not None and CUDA_PROVIDER not in settings.providers:
        raise GpuRequiredError(
            f"REQUIRE_GPU=1 but ORT_PROVIDERS={','.join(settings.providers)} does not list "
            f"{CUDA_PROVIDER}; add cuda or unset REQUIRE_GPU"
        )
    if CUDA_PROVIDER not in available:
        raise GpuRequiredError(
            f"REQUIRE_GPU=1 but this onnxruntime has no {CUDA_PROVIDER} (available: "
            f"{', '.join(available)}); install onnxruntime-gpu"
        )
    if gpu_count < 1:
        raise GpuRequiredError(
            "REQUIRE_GPU=1 but the CUDA driver reports no GPU (libcuda.so.1 missing, or no device "
            "visible); run on a GPU node, or unset REQUIRE_GPU to serve on the CPU"
        )


def check_gpu_active(settings: ExecutionSettings, active: list[str]) -> None:
    """Raise GpuRequiredError when ``REQUIRE_GPU=1`` and the session did not get the CUDA provider."""
    if settings.require_gpu and (not active or active[0] != CUDA_PROVIDER):
        raise GpuRequiredError(
            f"REQUIRE_GPU=1 but the session runs on {', '.join(active) or 'no provider'}: onnxruntime "
            "could not start the CUDA provider (its log above names the missing library, typically "
            "CUDA or cuDNN)"
        )


def cpu_cores() -> int:
    """Return the CPU cores this process may use: its affinity mask, capped by a cgroup v2 quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    # A container limited to 1.5 CPUs gets 1 thread: rounding up would oversubscribe the quota.
    return max(1, min(cores, int(quota) // int(period)))


def model_workers(settings: ExecutionSettings, providers: list[str], gpu_count: int) -> int:
    """Return the number of model processes: the setting, or one per GPU with CUDA, else 1."""
    if settings.model_workers is not None:
        return settings.model_workers
    if CUDA_PROVIDER in providers and gpu_count > 0:
        return gpu_count
    return 1


def intra_op_threads(settings: ExecutionSettings, workers: int, cores: int) -> int:
    if settings.intra_op_threads is not None:
        return settings.intra_op_threads
    return max(1, cores // workers)


def session_options(settings: ExecutionSettings, workers: int, cores: int):
    """Build onnxruntime SessionOptions: thread counts and the graph optimization level."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads(settings, workers, cores)
    if settings.inter_op_threads is not None:
        options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = levels[settings.graph_optimization]
    return options


def device_id(settings: ExecutionSettings, worker_index: int | None, gpu_count: int) -> int:
    """Return the GPU of this worker: the setting, else worker ``i`` (from 1) on GPU ``i - 1``."""
    if settings.device_id is not None:
        return settings.device_id
    if worker_index is None or gpu_count < 1:
        return 0
    return (worker_index - 1) % gpu_count


def provider_options(settings: ExecutionSettings, providers: list[str], device: int) -> list:
    """Return onnxruntime's ``providers`` argument, with options for the CUDA provider."""
    configured: list = []
    for name in providers:
        if name == CUDA_PROVIDER:
            configured.append(
                (
                    name,
                    {
                        "device_id": str(device),
                        "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
                        # Copies on the default stream keep IO binding's input copy ordered
                        # before the run that reads it.
                        "do_copy_in_default_stream": "1",
                    },
                )
            )
        else:
            configured.append(name)
    return configured


def uses_io_binding(settings: ExecutionSettings, active: list[str]) -> bool:
    if settings.io_binding is not None:
        return settings.io_binding
    return bool(active) and active[0] == CUDA_PROVIDER


def warmup_batch_sizes(settings: ExecutionSettings, max_batch_size: int, active: list[str]) -> list[int]:
    """Return the batch sizes to run once at startup, smallest first."""
    mode = settings.warmup_batch_sizes
    if mode is None:
        mode = "all" if active and active[0] == CUDA_PROVIDER else "ends"
    if mode == "all":
        return list(range(1, max_batch_size + 1))
    return sorted({1, max_batch_size})
