"""Export: a checkpoint becomes ONNX, TorchScript, golden samples and a manifest, with parity proven."""

from training.export.pipeline import (
    ExportError,
    ExportOptions,
    export,
    load_model_from_checkpoint,
    sample_images,
)
from training.export.wrappers import UInt8Input

__all__ = [
    "ExportError",
    "ExportOptions",
    "UInt8Input",
    "export",
    "load_model_from_checkpoint",
    "sample_images",
]
