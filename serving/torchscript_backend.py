"""The TorchScript backend (``BACKEND=torchscript``): ``model.pt`` under ``torch.inference_mode()``.

It exists to compare TorchScript with onnxruntime behind the same API, and it needs torch, which the
serving install does not carry. torch is imported only when a session is created, so importing this
module, and the ONNX path, never imports torch.

The export's ``model.pt`` takes the same input as ``model.onnx`` (the manifest's contract) and returns
logits. ``ORT_PROVIDERS`` picks the device: CUDA when it lists cuda (or is ``auto``) and torch sees a
GPU, else the CPU. ``REQUIRE_GPU`` and ``ORT_INTRA_OP_THREADS`` apply as for onnxruntime.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from serving.manifest import Manifest, load_manifest, resolve_model_dir, verify_files
from serving.providers import (
    CUDA_PROVIDER,
    ExecutionSettings,
    GpuRequiredError,
    cpu_cores,
    device_id,
    intra_op_threads,
)

logger = logging.getLogger(__name__)

TORCH_CPU = "torch-cpu"
TORCH_CUDA = "torch-cuda"


class TorchScriptSession:
    """A TorchScript module with the interface of ``serving.engine.OnnxSession``."""

    def __init__(
        self,
        model_dir: str | Path,
        verify: bool = True,
        execution: ExecutionSettings | None = None,
        workers: int = 1,
        worker_index: int | None = None,
    ):
        try:
            import torch
        except ImportError:
            raise RuntimeError(
                "BACKEND=torchscript needs torch, which is not installed here (the serving install "
                "carries onnxruntime only); install torch or use BACKEND=onnx"
            ) from None

        self.execution = execution if execution is not None else ExecutionSettings.from_env()
        self.model_dir = resolve_model_dir(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir)
        if verify:
            verify_files(self.model_dir, self.manifest)

        wants_cuda = self.execution.providers is None or CUDA_PROVIDER in self.execution.providers
        gpu_count = torch.cuda.device_count() if wants_cuda and torch.cuda.is_available() else 0
        if self.execution.require_gpu and gpu_count == 0:
            raise GpuRequiredError(
                "REQUIRE_GPU=1 but torch sees no CUDA device"
                + ("" if wants_cuda else " (ORT_PROVIDERS does not list cuda)")
            )
        self.device_id = device_id(self.execution, worker_index, gpu_count)
        self.device = torch.device(f"cuda:{self.device_id}" if gpu_count else "cpu")
        self.providers = [TORCH_CUDA if gpu_count else TORCH_CPU]
        self.intra_op_threads = intra_op_threads(self.execution, workers, cpu_cores())
        torch.set_num_threads(self.intra_op_threads)
        self.module = torch.jit.load(
            str(self.model_dir / self.manifest.torchscript_file), map_location=self.device
        ).eval()
        self._torch = torch

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> dict[str, object]:
        return {
            "backend": "torchscript",
            "providers": list(self.providers),
            "torch": self._torch.__version__,
            "intra_op_threads": self.intra_op_threads,
            **({"device_id": self.device_id} if self.on_gpu else {}),
        }

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the module on a prepared batch and return float32 logits ``[N, num_classes]``."""
        torch = self._torch
        # torch.from_numpy shares memory and warns on read-only arrays, which deserialized batches are.
        array = batch if batch.flags.writeable else batch.copy()
        with torch.inference_mode():
            outputs = self.module(torch.from_numpy(array).to(self.device))
        # A three-head export returns (logits, *head outputs); the combined logits come first.
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        return logits.float().cpu().numpy()

    def warm_up(self, batch_sizes: list[int]) -> None:
        from serving.engine import to_input_batch

        contract = self.manifest.input
        for batch_size in batch_sizes:
            shape = (batch_size, contract.height, contract.width, contract.image_spec.channels)
            self.infer(to_input_batch(np.zeros(shape, np.uint8), contract))
