"""The ``export`` command: checkpoint -> ONNX, TorchScript and a manifest, with parity proven.

The exported graph takes uint8 pixels ``[N, H, W, C]`` (already decoded and resized by
``serving.preprocess``) and does the conversion to float, the normalization and the transpose to NCHW
itself, so the service needs no torch and sends a quarter of the bytes of float32 input.

Every artifact is written to a temporary folder beside ``--out`` and moved into place only after the
parity checks pass, so a failed export leaves no half-written folder behind.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from serving.manifest import MANIFEST_NAME, InputContract, Manifest, sha256_file
from training.checkpoint import load_checkpoint
from training.config import Config
from training.data import build_data
from training.data.transforms import image_spec
from training.models import create_model

logger = logging.getLogger(__name__)

ONNX_OPSET = 18
PARITY_BATCH_SIZES = (1, 3)
DEFAULT_TOLERANCE = 1e-4

# torch 2.9+ marks torch.jit as deprecated with a FutureWarning. TorchScript is still the format that
# C++ and Triton's PyTorch backend load, so it stays an artifact.
warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)


class ExportError(RuntimeError):
    """Raised when an artifact cannot be written or fails its parity check."""


class UInt8Input(nn.Module):
    """Wrap a model so it takes uint8 ``[N, H, W, C]`` and normalizes inside the graph."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", mean_t / std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (x / 255 - mean) / std, folded into one multiply and one subtract.
        x = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
        return self.model(x)


def load_model_from_checkpoint(path: Path) -> tuple[nn.Module, Config, list[str], dict]:
    state = load_checkpoint(path)
    config = Config.model_validate(state["config"])
    class_names = list(state["class_names"])
    in_chans = 1 if config.data.color_mode == "L" else 3
    model = create_model(config.model.model_copy(update={"pretrained": None}), len(class_names), in_chans)
    model.load_state_dict(state["model"])
    model.eval()
    return model, config, class_names, state


def sample_images(config: Config, count: int) -> np.ndarray:
    """Return ``count`` real validation images as uint8 ``[N, H, W, C]`` through the serving rule."""
    from serving.preprocess import to_array

    data = build_data(config)
    spec = image_spec(config.data)
    samples = data.val.samples[:count]
    if len(samples) < count:
        raise ExportError(f"the validation split has {len(samples)} images; the export needs {count}")
    return np.stack([to_array(sample.load(), spec) for sample in samples])


def export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Export with a dynamic batch axis; return the exporter's name."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamo=True,
            dynamic_shapes={"images": {0: batch}},
            external_data=False,
            verbose=False,
        )
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    return f"torch.onnx.export(dynamo=True) torch {torch.__version__}"


def export_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Script the wrapper, or trace it when scripting fails; return which was used."""
    try:
        module = torch.jit.script(wrapper)
        method = "script"
    except Exception as exc:  # scripting rejects many timm models; tracing is the documented fallback
        logger.info("torch.jit.script failed (%s: %s); tracing instead", type(exc).__name__, exc)
        module = torch.jit.trace(wrapper, example, check_inputs=[(example[:1],), (example,)])
        method = "trace"
    module.save(str(path))
    return method


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def check_parity(
    wrapper: nn.Module, onnx_path: Path, torchscript_path: Path, images: np.ndarray
) -> dict[str, float]:
    """Compare eager logits with ONNX and TorchScript at each parity batch size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(torchscript_path))
    parity: dict[str, float] = {}
    with torch.no_grad():
        for batch_size in PARITY_BATCH_SIZES:
            batch = images[:batch_size]
            eager = wrapper(torch.from_numpy(batch)).numpy()
            onnx_logits = session.run(None, {"images": batch})[0]
            ts_logits = scripted(torch.from_numpy(batch)).numpy()
            parity[f"onnx_batch{batch_size}"] = max_abs_diff(eager, onnx_logits)
            parity[f"torchscript_batch{batch_size}"] = max_abs_diff(eager, ts_logits)
    return parity


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


def export(
    checkpoint: Path, out: Path, tolerance: float = DEFAULT_TOLERANCE, version: str | None = None
) -> Path:
    """Write model.onnx, model.pt and manifest.json to ``out``; return ``out``."""
    model, config, class_names, _ = load_model_from_checkpoint(checkpoint)
    contract = InputContract(
        height=config.data.image_size,
        width=config.data.image_size,
        color_mode=config.data.color_mode,
        resize=config.data.resize,
        mean=config.data.mean,
        std=config.data.std,
    )
    wrapper = UInt8Input(model, config.data.mean, config.data.std).eval()
    images = sample_images(config, max(PARITY_BATCH_SIZES))
    # At least two rows, so the exporter cannot specialize the batch axis to 1.
    example = torch.from_numpy(images[:2])

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        exporter = export_onnx(wrapper, example, staging / "model.onnx")
        script_method = export_torchscript(wrapper, example, staging / "model.pt")
        parity = check_parity(wrapper, staging / "model.onnx", staging / "model.pt", images)
        failed = {name: diff for name, diff in parity.items() if not diff <= tolerance}
        if failed:
            details = ", ".join(f"{name} {diff:.3g}" for name, diff in failed.items())
            raise ExportError(
                f"parity check failed for {out}: max absolute logit difference over {tolerance:g}: {details}"
            )
        manifest = Manifest(
            name=config.name,
            version=version or datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            architecture=config.model.name,
            class_names=class_names,
            input=contract,
            opset=ONNX_OPSET,
            exporter=f"{exporter}; torchscript {script_method}",
            versions=library_versions(),
            files={name: sha256_file(staging / name) for name in ("model.onnx", "model.pt")},
            parity=parity,
            parity_tolerance=tolerance,
        )
        (staging / MANIFEST_NAME).write_text(
            json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
        )
        staging.chmod(0o755)  # mkdtemp creates 0700; the service may run as another user
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("exported %s to %s; parity %s", checkpoint, out, json.dumps(parity))
    return out
