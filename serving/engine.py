"""onnxruntime inference for an export folder, with no torch.

``OnnxSession`` loads ``model.onnx`` as the manifest describes it with the execution providers and
session options of ``serving.providers``. ``OnnxClassifier`` adds the turn of decoded pixels into
top-k predictions, for offline use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.manifest import InputContract, Manifest, load_manifest, resolve_model_dir, verify_files
from serving.providers import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    ExecutionSettings,
    available_providers,
    check_gpu_active,
    check_gpu_prerequisites,
    cpu_cores,
    cuda_device_count,
    device_id,
    intra_op_threads,
    provider_options,
    resolve_providers,
    session_options,
    uses_io_binding,
)

logger = logging.getLogger(__name__)

__all__ = ["CPU_PROVIDER", "CUDA_PROVIDER", "cuda_device_count", "choose_providers"]


def usable_gpu_count(settings: ExecutionSettings, available: list[str]) -> int:
    """Count GPUs only when the CUDA provider could be used, so a CPU setup never loads the driver."""
    if CUDA_PROVIDER not in available:
        return 0
    if settings.providers is not None and CUDA_PROVIDER not in settings.providers:
        return 0
    return cuda_device_count()


def choose_providers(settings: ExecutionSettings | None = None) -> list[str]:
    """Return the providers to request: ``ORT_PROVIDERS``, or CUDA then CPU with a GPU, else CPU."""
    settings = settings or ExecutionSettings()
    available = available_providers()
    return resolve_providers(settings, available, usable_gpu_count(settings, available))


@dataclass(frozen=True)
class TopClass:
    label: str
    class_id: int
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def to_input_batch(images: np.ndarray, contract: InputContract) -> np.ndarray:
    """Convert uint8 ``[N, H, W, C]`` pixels to the layout and dtype the contract names."""
    batch = np.ascontiguousarray(images, dtype=np.uint8)
    if contract.format == "float32_nchw":
        mean = np.asarray(contract.mean, dtype=np.float32)
        std = np.asarray(contract.std, dtype=np.float32)
        batch = ((batch.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2)
        batch = np.ascontiguousarray(batch)
    return batch


class OnnxSession:
    """An onnxruntime session over an export's ``model.onnx``, with providers from ``ExecutionSettings``.

    ``execution`` defaults to the environment (``ExecutionSettings.from_env``). ``workers`` is the
    number of model processes sharing this machine's cores, and ``worker_index`` (from 1) picks
    this process's GPU. With ``REQUIRE_GPU=1``, GpuRequiredError is raised unless the session runs
    on the CUDA provider.
    """

    def __init__(
        self,
        model_dir: str | Path,
        providers: list[str] | None = None,
        verify: bool = True,
        onnx_file: str | None = None,
        execution: ExecutionSettings | None = None,
        workers: int = 1,
        worker_index: int | None = None,
    ):
        import onnxruntime as ort

        self.execution = execution if execution is not None else ExecutionSettings.from_env()
        self.model_dir = resolve_model_dir(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir)
        if verify:
            verify_files(self.model_dir, self.manifest)

        available = available_providers()
        gpu_count = usable_gpu_count(self.execution, available)
        check_gpu_prerequisites(self.execution, available, gpu_count)
        requested = providers or resolve_providers(self.execution, available, gpu_count)
        self.device_id = device_id(self.execution, worker_index, gpu_count)
        self.intra_op_threads = intra_op_threads(self.execution, workers, cpu_cores())
        self.session = ort.InferenceSession(
            str(self.model_dir / (onnx_file or self.manifest.onnx_file)),
            sess_options=session_options(self.execution, workers, cpu_cores()),
            providers=provider_options(self.execution, requested, self.device_id),
        )
        self.providers: list[str] = self.session.get_providers()
        check_gpu_active(self.execution, self.providers)
        if CUDA_PROVIDER in requested and CUDA_PROVIDER not in self.providers:
            logger.warning(
                "%s was requested but onnxruntime fell back to %s; "
                "set REQUIRE_GPU=1 to refuse to start instead",
                CUDA_PROVIDER,
                ", ".join(self.providers),
            )
        self.io_binding = uses_io_binding(self.execution, self.providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] == CUDA_PROVIDER

    def describe(self) -> dict[str, object]:
        """Return the settings in effect, for the startup log and ``GET /model``."""
        options = self.session.get_provider_options()
        cuda = options.get(CUDA_PROVIDER, {})
        return {
            "backend": "onnx",
            "providers": list(self.providers),
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.execution.inter_op_threads or 0,
            "graph_optimization": self.execution.graph_optimization,
            "io_binding": self.io_binding,
            **({"device_id": int(cuda["device_id"])} if self.on_gpu else {}),
            **({"cudnn_conv_algo_search": cuda.get("cudnn_conv_algo_search")} if self.on_gpu else {}),
        }

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the graph on a prepared batch and return float32 logits ``[N, num_classes]``."""
        if self.io_binding:
            return self._infer_bound(batch)
        (logits,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(logits, dtype=np.float32)

    def _infer_bound(self, batch: np.ndarray) -> np.ndarray:
        """Run with IO binding: the input is copied to the device once, the output stays there until read."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        if self.on_gpu:
            binding.bind_output(self.output_name, "cuda", self.device_id)
        else:
            binding.bind_output(self.output_name)
        self.session.run_with_iobinding(binding)
        (logits,) = binding.copy_outputs_to_cpu()
        return np.asarray(logits, dtype=np.float32)

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run each batch size once on zeros, so first requests pay no allocation or algorithm search."""
        contract = self.manifest.input
        for batch_size in batch_sizes:
            shape = (batch_size, contract.height, contract.width, contract.image_spec.channels)
            self.infer(to_input_batch(np.zeros(shape, np.uint8), contract))


class Postprocessor:
    """Batch layout before the graph and top-k after it, as the manifest's contract defines them."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.contract = manifest.input
        self.spec = manifest.input.image_spec
        self.class_names = manifest.class_names

    def to_batch(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Stack uint8 HWC arrays into the graph's input layout and dtype."""
        return to_input_batch(np.stack(arrays), self.contract)

    def top_k(self, logits: np.ndarray, k: int = 5) -> list[list[TopClass]]:
        """Return the k most probable classes of each row, best first."""
        probabilities = softmax(logits)
        k = min(k, probabilities.shape[1])
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            [TopClass(self.class_names[i], int(i), float(row[i])) for i in row_order]
            for row, row_order in zip(probabilities, order, strict=True)
        ]


class OnnxClassifier:
    """Session and postprocessing in one process, for offline prediction and checks."""

    def __init__(self, model_dir: str | Path, providers: list[str] | None = None, verify: bool = True):
        self.session = OnnxSession(model_dir, providers=providers, verify=verify)
        self.manifest = self.session.manifest
        self.postprocessor = Postprocessor(self.manifest)
        self.spec = self.postprocessor.spec

    def predict_arrays(self, arrays: list[np.ndarray], k: int = 5) -> list[list[TopClass]]:
        logits = self.session.infer(self.postprocessor.to_batch(arrays))
        return self.postprocessor.top_k(logits, k=k)


def open_session(
    backend: str,
    model_dir: str | Path,
    execution: ExecutionSettings,
    workers: int = 1,
    worker_index: int | None = None,
):
    """Load the export with the chosen backend: ``onnx`` (onnxruntime) or ``torchscript`` (torch)."""
    if backend == "torchscript":
        from serving.torchscript_backend import TorchScriptSession

        return TorchScriptSession(model_dir, execution=execution, workers=workers, worker_index=worker_index)
    if backend != "onnx":
        raise ValueError(f"BACKEND must be onnx or torchscript, got {backend!r}")
    return OnnxSession(model_dir, execution=execution, workers=workers, worker_index=worker_index)
