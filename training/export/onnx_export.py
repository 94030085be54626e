"""ONNX artifacts: the fp32 graph from either exporter, and its fp16 and int8 variants."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

ONNX_OPSET = 18
OnnxExporter = Literal["dynamo", "torchscript"]
# Upper bound of the dynamic batch axis for the dynamo exporter; it only constrains export-time checks.
MAX_EXPORT_BATCH = 4096


def export_onnx(
    wrapper: nn.Module,
    example: torch.Tensor,
    path: Path,
    exporter: OnnxExporter,
    output_names: list[str] | None = None,
) -> None:
    """Export with a dynamic batch axis and check the file with ``onnx.checker``.

    ``dynamo`` is the torch.export-based exporter; ``torchscript`` is the older exporter that traces
    the model with TorchScript. Both take the same input name, ``images``. The outputs are named
    ``output_names`` in the order the wrapper returns them (default: ``logits`` alone), and every
    output has the batch as its first axis.
    """
    import onnx

    output_names = output_names or ["logits"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        common = {"input_names": ["images"], "output_names": output_names, "opset_version": ONNX_OPSET}
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                **common,
                dynamo=True,
                dynamic_shapes={"images": {0: batch}},
                external_data=False,
                verbose=False,
            )
        elif exporter == "torchscript":
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                **common,
                dynamo=False,
                dynamic_axes={"images": {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
            )
        else:
            raise ValueError(f"unknown ONNX exporter {exporter!r}; allowed: dynamo, torchscript")
    onnx.checker.check_model(str(path), full_check=True)


def convert_fp16(source: Path, target: Path) -> None:
    """Write an fp16 copy of the graph that keeps uint8 input and float32 output."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    onnx.checker.check_model(str(target), full_check=True)


class _CalibrationReader:
    """Feed calibration batches to onnxruntime's static quantizer."""

    def __init__(self, batches: list[np.ndarray]):
        self._batches = batches
        self._iterator: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iterator, None)
        return None if batch is None else {"images": batch}

    def rewind(self) -> None:
        self._iterator = iter(self._batches)


def quantize_int8(source: Path, target: Path, calibration: np.ndarray, batch_size: int = 16) -> None:
    """Quantize statically to int8 (QDQ format), calibrated on ``calibration`` images.

    Weights are int8 per channel and activations uint8, which onnxruntime's CPU kernels run fastest.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_suffix(".prepared.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        batches = [calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size)]
        quantize_static(
            str(prepared),
            str(target),
            _CalibrationReader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)
    onnx.checker.check_model(str(target), full_check=True)
