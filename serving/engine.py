"""onnxruntime inference for an export folder, with no torch.

``OnnxClassifier`` loads ``model.onnx`` as the manifest describes it, chooses the execution provider
(CUDA when a GPU is really there, CPU otherwise) and turns decoded pixels into top-k predictions.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.manifest import InputContract, Manifest, load_manifest, resolve_model_dir, verify_files

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


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


def choose_providers() -> list[str]:
    """Return CUDA then CPU when a GPU and the CUDA provider are both present, else CPU alone."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA_PROVIDER in available and cuda_device_count() > 0:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


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
    """An onnxruntime session over an export's ``model.onnx``."""

    def __init__(
        self,
        model_dir: str | Path,
        providers: list[str] | None = None,
        verify: bool = True,
        onnx_file: str | None = None,
    ):
        import onnxruntime as ort

        self.model_dir = resolve_model_dir(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir)
        if verify:
            verify_files(self.model_dir, self.manifest)

        options = ort.SessionOptions()
        threads = os.environ.get("ORT_INTRA_OP_THREADS")
        if threads:
            options.intra_op_num_threads = int(threads)
        requested = providers or choose_providers()
        self.session = ort.InferenceSession(
            str(self.model_dir / (onnx_file or self.manifest.onnx_file)),
            sess_options=options,
            providers=requested,
        )
        self.providers: list[str] = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the graph on a prepared batch and return float32 logits ``[N, num_classes]``."""
        (logits,) = self.session.run(None, {self.input_name: batch})
        return np.asarray(logits, dtype=np.float32)


class Postprocessor:
    """Batch layout before the graph and top-k after it, as the manifest's contract says."""

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
