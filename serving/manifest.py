"""The export manifest: the contract between an export folder and the service.

The exporter writes ``manifest.json`` with these models and the service reads it back with them, so
a service can load a model with no torch installed. Pydantic validates the file on load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.preprocess import ColorMode, ImageSpec, ResizeMode

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1


class InputContract(BaseModel):
    """What the ONNX graph takes as input.

    ``uint8_nhwc``: decoded, resized pixels ``[N, H, W, C]`` as uint8; the graph converts to float,
    normalizes and transposes. ``float32_nchw``: the caller normalizes with ``mean`` and ``std``
    (on a 0..1 scale) and sends ``[N, C, H, W]`` float32.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "images"
    format: Literal["uint8_nhwc", "float32_nchw"] = "uint8_nhwc"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    color_mode: ColorMode
    resize: ResizeMode = "stretch"
    interpolation: Literal["bilinear"] = "bilinear"
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _check_channels(self) -> InputContract:
        channels = ImageSpec(self.height, self.width, self.color_mode, self.resize).channels
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"mean and std need {channels} values for color_mode {self.color_mode}, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        return self

    @property
    def image_spec(self) -> ImageSpec:
        return ImageSpec(self.height, self.width, self.color_mode, self.resize)

    @property
    def shape(self) -> list[int | str]:
        channels = self.image_spec.channels
        if self.format == "uint8_nhwc":
            return ["batch", self.height, self.width, channels]
        return ["batch", channels, self.height, self.width]


class OutputContract(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "logits"
    kind: Literal["logits"] = "logits"


class Manifest(BaseModel):
    """Everything a service needs to load and check an export."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    version: str
    created: str
    architecture: str
    class_names: list[str] = Field(min_length=2)
    input: InputContract
    output: OutputContract = OutputContract()
    onnx_file: str = "model.onnx"
    torchscript_file: str = "model.pt"
    opset: int
    exporter: str
    versions: dict[str, str]
    files: dict[str, str] = Field(description="sha256 hex digest of every artifact, by file name")
    parity: dict[str, float] = Field(
        description="max absolute logit difference against eager PyTorch, by engine and batch size"
    )
    parity_tolerance: float

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(model_dir: str | Path) -> Manifest:
    """Read and validate ``manifest.json`` from an export folder."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {Path(model_dir)}: point MODEL_DIR at a folder written by "
            "'python -m training export'"
        )
    return Manifest.model_validate_json(path.read_text(encoding="utf-8"))


def verify_files(model_dir: str | Path, manifest: Manifest) -> None:
    """Check every artifact against its sha256 in the manifest; raise naming the first mismatch."""
    for file_name, expected in manifest.files.items():
        path = Path(model_dir) / file_name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ValueError(f"{path}: sha256 {actual} does not match the manifest's {expected}")
