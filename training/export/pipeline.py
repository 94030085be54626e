"""The ``export`` command: checkpoint -> ``exports/<name>/<version>/`` with parity proven.

By default the exported graph takes uint8 pixels ``[N, H, W, C]`` (already decoded and resized by
``serving.preprocess``) and does the conversion to float, the normalization and the transpose to NCHW
itself, so the service needs no torch and sends a quarter of the bytes of float32 input.

A three-head model keeps the same input and the same first output, ``logits`` ``[N, 18]``, and adds
one graph output per head (see ``training.export.wrappers.HeadOutputs``). Parity covers every output.

Every artifact is written to a temporary folder beside the version folder and moved into place only
after the parity checks pass, so a failed export leaves no half-written folder behind.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from serving.engine import to_input_batch
from serving.manifest import MANIFEST_NAME, InputContract, Manifest, Variant, sha256_file
from serving.preprocess import load_array, to_array
from training.checkpoint import load_checkpoint
from training.config import Config
from training.data import build_data
from training.data.datasets import Sample
from training.data.transforms import image_spec
from training.export.golden import write_golden
from training.export.model_card import render_model_card
from training.export.onnx_export import ONNX_OPSET, OnnxExporter, convert_fp16, export_onnx, quantize_int8
from training.export.parity import Engine, failures, first_output, measure_parity, run_batched
from training.export.torchscript_export import TracerWarningError, export_torchscript
from training.export.wrappers import export_module, output_contract, output_names
from training.models import create_model

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4
DEFAULT_FP16_TOLERANCE = 1e-2
# int8 is not gated on parity; a macro F1 loss over this many points is logged as a warning.
INT8_MAX_F1_LOSS = 0.01


class ExportError(RuntimeError):
    """Raised when an artifact cannot be written or fails its parity check."""


@dataclass(frozen=True)
class ExportOptions:
    tolerance: float = DEFAULT_TOLERANCE
    version: str | None = None
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"
    input_format: Literal["uint8_nhwc", "float32_nchw"] = "uint8_nhwc"
    allow_tracer_warnings: bool = False
    int8: bool = False
    fp16: bool = False
    fp16_tolerance: float = DEFAULT_FP16_TOLERANCE
    golden_count: int = 4
    parity_images: int = 32
    eval_images: int = 512


def load_model_from_checkpoint(path: Path) -> tuple[nn.Module, Config, list[str], dict]:
    """Rebuild the model of a checkpoint in eval mode; return it with its config, classes and state."""
    state = load_checkpoint(path)
    config = Config.model_validate(state["config"])
    class_names = list(state["class_names"])
    in_chans = 1 if config.data.color_mode == "L" else 3
    model_config = config.model.model_copy(update={"pretrained": None})
    model = create_model(model_config, len(class_names), in_chans, config.data.age_cutoffs)
    model.load_state_dict(state["model"])
    model.eval()
    return model, config, class_names, state


def validation_samples(config: Config, count: int) -> list[Sample]:
    samples = build_data(config).val.samples[:count]
    if len(samples) < 8:
        raise ExportError(f"the validation split has {len(samples)} images; the export needs at least 8")
    return samples


def sample_images(config: Config, count: int) -> np.ndarray:
    """Return ``count`` real validation images as uint8 ``[N, H, W, C]`` through the serving rule."""
    spec = image_spec(config.data)
    return np.stack([to_array(sample.load(), spec) for sample in validation_samples(config, count)])


def next_version(root: Path) -> str:
    existing = [int(child.name) for child in root.iterdir() if child.is_dir() and child.name.isdigit()]
    return str(max(existing, default=0) + 1)


def torch_engine(module: nn.Module, contract: InputContract, names: list[str]) -> Engine:
    """Wrap an eager or TorchScript module that returns a tensor, or a tuple of tensors named ``names``."""

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outputs = module(torch.from_numpy(to_input_batch(images, contract)))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        if len(outputs) != len(names):
            raise ValueError(f"the module returned {len(outputs)} outputs, expected {len(names)}: {names}")
        return {name: output.numpy() for name, output in zip(names, outputs, strict=True)}

    return run


def onnx_engine(path: Path, contract: InputContract) -> Engine:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = session.run(names, {"images": to_input_batch(images, contract)})
        return dict(zip(names, outputs, strict=True))

    return run


def batched_logits(engine: Engine, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return first_output(lambda batch: run_batched(engine, batch, batch_size))(images)


def classification_metrics(logits: np.ndarray, targets: list[int]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    predictions = logits.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(targets, predictions)),
        "macro_f1": float(f1_score(targets, predictions, average="macro")),
    }


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def export_onnx_with_parity(
    wrapper: nn.Module,
    example: torch.Tensor,
    path: Path,
    options: ExportOptions,
    reference: Engine,
    contract: InputContract,
    images: np.ndarray,
    names: list[str],
) -> tuple[str, str]:
    """Export ONNX with the chosen exporter, or in ``auto`` mode the first one that passes parity.

    Returns the exporter used and a note on why an earlier one was not used.
    """
    candidates: list[OnnxExporter] = (
        ["dynamo", "torchscript"] if options.exporter == "auto" else [options.exporter]
    )
    notes = []
    for exporter in candidates:
        try:
            export_onnx(wrapper, example, path, exporter, names)
            report = measure_parity(reference, {"onnx": onnx_engine(path, contract)}, images)
        except Exception as exc:  # any exporter failure moves on to the next exporter in auto mode
            notes.append(f"{exporter} exporter failed: {type(exc).__name__}: {str(exc)[:300]}")
            logger.warning("ONNX export with the %s exporter failed: %s", exporter, exc)
            continue
        over = failures(report, options.tolerance)
        if not over:
            return exporter, "; ".join(notes)
        notes.append(f"{exporter} exporter failed parity: {over}")
        logger.warning("ONNX from the %s exporter failed parity: %s", exporter, over)
    raise ExportError(f"no ONNX exporter produced {path.name} within tolerance: {'; '.join(notes)}")


def build_variants(
    staging: Path,
    options: ExportOptions,
    contract: InputContract,
    reference: Engine,
    images: np.ndarray,
    eval_images: np.ndarray,
    eval_targets: list[int],
) -> dict[str, Variant]:
    variants: dict[str, Variant] = {}
    fp32_metrics = classification_metrics(
        batched_logits(onnx_engine(staging / "model.onnx", contract), eval_images), eval_targets
    )
    if options.fp16:
        convert_fp16(staging / "model.onnx", staging / "model.fp16.onnx")
        engine = onnx_engine(staging / "model.fp16.onnx", contract)
        report = measure_parity(reference, {"fp16": engine}, images)
        if not report["fp16_probs_max_abs"] <= options.fp16_tolerance:
            raise ExportError(
                f"parity check failed for model.fp16.onnx: max absolute probability difference "
                f"{report['fp16_probs_max_abs']:.3g} over the fp16 tolerance {options.fp16_tolerance:g}"
            )
        metrics = classification_metrics(batched_logits(engine, eval_images), eval_targets)
        variants["fp16"] = Variant(
            file="model.fp16.onnx",
            precision="fp16",
            parity=report,
            tolerance=options.fp16_tolerance,
            metrics={
                **{f"fp32_{k}": v for k, v in fp32_metrics.items()},
                **{f"fp16_{k}": v for k, v in metrics.items()},
            },
            notes="fp16 weights and activations, uint8 input and float32 output; meant for the CUDA provider",
        )
    if options.int8:
        quantize_int8(staging / "model.onnx", staging / "model.int8.onnx", images)
        engine = onnx_engine(staging / "model.int8.onnx", contract)
        report = measure_parity(reference, {"int8": engine}, images)
        metrics = classification_metrics(batched_logits(engine, eval_images), eval_targets)
        f1_loss = fp32_metrics["macro_f1"] - metrics["macro_f1"]
        if f1_loss > INT8_MAX_F1_LOSS:
            logger.warning("int8 loses %.2f points of macro F1 against fp32", 100 * f1_loss)
        variants["int8"] = Variant(
            file="model.int8.onnx",
            precision="int8",
            parity=report,
            tolerance=1.0,
            metrics={
                **{f"fp32_{k}": v for k, v in fp32_metrics.items()},
                **{f"int8_{k}": v for k, v in metrics.items()},
            },
            notes=f"static QDQ quantization, calibrated on {len(images)} validation images; "
            "judged by its validation metrics, not by logit parity",
        )
    return variants


def export(checkpoint: Path, out: Path, options: ExportOptions | None = None, **overrides) -> Path:
    """Write an export version folder under ``out``; return that folder."""
    options = options or ExportOptions(**overrides)
    model, config, class_names, state = load_model_from_checkpoint(checkpoint)
    contract = InputContract(
        format=options.input_format,
        height=config.data.image_size,
        width=config.data.image_size,
        color_mode=config.data.color_mode,
        resize=config.data.resize,
        mean=config.data.mean,
        std=config.data.std,
    )
    wrapper = export_module(model, options.input_format, config.data.mean, config.data.std)
    names = output_names(model)
    spec = image_spec(config.data)
    samples = validation_samples(config, max(options.parity_images, options.eval_images))
    eval_images = np.stack([to_array(sample.load(), spec) for sample in samples])
    eval_targets = [sample.target for sample in samples]
    images = eval_images[: options.parity_images]
    # At least two rows, so the exporter cannot specialize the batch axis to 1.
    example = torch.from_numpy(to_input_batch(images[:2], contract))
    reference = torch_engine(wrapper, contract, names)

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    version = options.version or next_version(root)
    if not version.isdigit() or int(version) < 1:
        raise ExportError(f"version must be a positive integer, got {version!r}")
    final = root / version
    if final.exists():
        raise ExportError(f"{final} exists; export versions are immutable, choose another --version")

    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root))
    try:
        exporter, exporter_notes = export_onnx_with_parity(
            wrapper, example, staging / "model.onnx", options, reference, contract, images, names
        )
        try:
            method = export_torchscript(wrapper, example, staging / "model.pt", options.allow_tracer_warnings)
        except TracerWarningError as exc:
            raise ExportError(f"TorchScript export of {final / 'model.pt'} failed: {exc}") from exc
        engines = {
            "onnx": onnx_engine(staging / "model.onnx", contract),
            "torchscript": torch_engine(torch.jit.load(str(staging / "model.pt")), contract, names),
        }
        parity = measure_parity(reference, engines, images)
        over = failures(parity, options.tolerance)
        if over:
            details = ", ".join(f"{name} {diff:.3g}" for name, diff in over.items())
            raise ExportError(
                f"parity check failed for {final}: max absolute output difference over "
                f"{options.tolerance:g}: {details}"
            )
        variants = build_variants(staging, options, contract, reference, images, eval_images, eval_targets)
        golden = write_golden(
            samples[: options.golden_count],
            staging,
            first_output(engines["onnx"]),
            lambda path: load_array(path, spec),
        )
        artifact_names = [
            "model.onnx",
            "model.pt",
            *(v.file for v in variants.values()),
            *(g.file for g in golden),
        ]
        manifest = Manifest(
            name=config.name,
            version=version,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            architecture=config.model.name,
            class_names=class_names,
            input=contract,
            output=output_contract(model, class_names, config.data.age_cutoffs),
            opset=ONNX_OPSET,
            exporter=exporter,
            exporter_notes=exporter_notes,
            torchscript_method=method,
            versions=library_versions(),
            files={name: sha256_file(staging / name) for name in artifact_names},
            parity=parity,
            parity_tolerance=options.tolerance,
            golden=golden,
            variants=variants,
            metrics={k: float(v) for k, v in state.get("metrics", {}).items()},
        )
        (staging / MANIFEST_NAME).write_text(
            json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
        )
        (staging / "model_card.md").write_text(
            render_model_card(manifest, config.model_dump(mode="json")), encoding="utf-8"
        )
        for path in [staging, *staging.rglob("*")]:
            path.chmod(
                0o755 if path.is_dir() else 0o644
            )  # mkdtemp creates 0700; the service may run as another user
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("exported %s to %s (ONNX exporter %s, TorchScript %s)", checkpoint, final, exporter, method)
    return final
