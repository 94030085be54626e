"""The model process of the BentoML service: one session, called with batches merged across requests.

The service is named ``onnx_model`` whatever the backend (``BACKEND``), because the BentoML metrics
and the drain on SIGTERM identify its workers by that name. Settings are read once at import
(``serving.settings``, ``serving.providers``).

With ``REQUIRE_GPU=1``, what can be checked without a session (the CUDA provider is installed, the
driver reports a GPU, ``ORT_PROVIDERS`` allows CUDA) is checked at import, so ``bentoml serve``
exits at once with the reason. A session that then falls back to the CPU anyway stops the whole
server from the model worker.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import bentoml
import numpy as np

from serving.engine import open_session, usable_gpu_count
from serving.lifecycle import Lifecycle, wait_for_siblings
from serving.observability import library_versions, model_metrics
from serving.providers import (
    ExecutionSettings,
    GpuRequiredError,
    available_providers,
    check_gpu_prerequisites,
    model_workers,
    resolve_providers,
    warmup_batch_sizes,
)
from serving.settings import ServiceSettings

logger = logging.getLogger("serving.model_service")
logging.getLogger("serving").setLevel(logging.INFO)

SETTINGS = ServiceSettings.from_env()
EXECUTION = ExecutionSettings.from_env()
MODEL_LIFECYCLE = Lifecycle("onnx_model")
if SETTINGS.backend == "onnx":
    _AVAILABLE = available_providers()
    _GPU_COUNT = usable_gpu_count(EXECUTION, _AVAILABLE)
    check_gpu_prerequisites(EXECUTION, _AVAILABLE, _GPU_COUNT)
    MODEL_WORKERS = model_workers(EXECUTION, resolve_providers(EXECUTION, _AVAILABLE, _GPU_COUNT), _GPU_COUNT)
else:
    # The torchscript backend finds its GPUs through torch, which only the worker imports.
    MODEL_WORKERS = EXECUTION.model_workers or 1
# BentoML requires a batchable API's max_batch_size to be at least 2; the API process still sends
# each request's images in chunks of MAX_BATCH_SIZE.
BATCHABLE_MAX = max(2, SETTINGS.max_batch_size)


def _stop_server(reason: str) -> None:
    """Send SIGTERM to the ``bentoml serve`` process, so a failed GPU requirement stops every worker."""
    import psutil

    try:
        parent = psutil.Process(os.getppid())
        is_server = any("bentoml" in part for part in parent.cmdline())
    except psutil.Error as exc:
        logger.error("cannot stop the server after: %s (%s)", reason, exc)
        return
    if is_server:
        logger.critical("stopping the server: %s", reason)
        parent.send_signal(signal.SIGTERM)


@bentoml.service(name="onnx_model", workers=MODEL_WORKERS, threads=1)
class OnnxModel:
    """The model session (onnxruntime or TorchScript), called with batches merged across requests."""

    def __init__(self) -> None:
        # NOTE: BentoML 1.4 exposes the worker index (from 1) only through this private module.
        from bentoml._internal.context import server_context

        self.session = None
        self.metrics = None
        MODEL_LIFECYCLE.install_sigterm_drain(
            lambda: wait_for_siblings("onnx_model", SETTINGS.drain_timeout_s)
        )
        try:
            # Verifies every file's sha256 against the manifest before the graph is loaded.
            session = open_session(
                SETTINGS.backend, SETTINGS.model_dir, EXECUTION, MODEL_WORKERS, server_context.worker_index
            )
            sizes = warmup_batch_sizes(EXECUTION, BATCHABLE_MAX, session.providers)
            session.warm_up(sizes)
        except GpuRequiredError as exc:
            MODEL_LIFECYCLE.mark_failed(str(exc))
            _stop_server(str(exc))
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            # onnxruntime raises RuntimeError subclasses for a graph it cannot load. The process
            # stays up and not ready, so /readyz reports why instead of a restart loop.
            MODEL_LIFECYCLE.mark_failed(f"cannot load the model from {SETTINGS.model_dir}: {exc}")
            return
        self.session = session
        manifest = session.manifest
        self.metrics = model_metrics(manifest.name, manifest.version, session.providers[0], BATCHABLE_MAX)
        logger.info(
            "model process: libraries %s; execution %s; workers %d (this is %s); warmed up batch sizes %s",
            library_versions(),
            session.describe(),
            MODEL_WORKERS,
            server_context.worker_index,
            _ranges(sizes),
        )
        MODEL_LIFECYCLE.mark_ready(
            f"loaded {SETTINGS.model_dir} ({SETTINGS.backend}) on {','.join(session.providers)}; "
            f"max_batch_size={BATCHABLE_MAX} max_latency_ms={SETTINGS.max_latency_ms}"
        )

    def __is_ready__(self) -> bool:
        return MODEL_LIFECYCLE.is_ready

    @bentoml.api(batchable=True, max_batch_size=BATCHABLE_MAX, max_latency_ms=SETTINGS.max_latency_ms)
    def infer(self, images: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise RuntimeError(f"the model is not loaded: {MODEL_LIFECYCLE.reason}")
        started = time.perf_counter()
        logits = self.session.infer(images)
        self.metrics.observe_call(len(images), time.perf_counter() - started)
        return logits

    @bentoml.api
    def providers(self) -> list[str]:
        """Return the execution providers in use, in priority order."""
        return list(self.session.providers) if self.session is not None else []

    @bentoml.api
    def execution(self) -> dict:
        """Return the backend, providers, threads and device settings in effect."""
        return self.session.describe() if self.session is not None else {}

    @bentoml.on_shutdown
    def log_shutdown(self) -> None:
        logger.info("model process shutting down (%s)", MODEL_LIFECYCLE.state)


def _ranges(sizes: list[int]) -> str:
    if len(sizes) > 2 and sizes == list(range(sizes[0], sizes[-1] + 1)):
        return f"{sizes[0]}..{sizes[-1]}"
    return ",".join(str(size) for size in sizes)
