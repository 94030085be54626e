"""The export manifest: the contract between an export folder and the service.

The exporter writes ``manifest.json`` with these models and the service reads it back with them, so
a service can load a model with no torch installed. Pydantic validates the file on load.

Exports live in ``exports/<name>/<version>/`` with positive integer versions, as in a Triton model
repository. A model folder given to the service may be a version folder (it contains
``manifest.json``) or a model folder, in which case the highest version is used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.preprocess import ColorMode, ImageSpec, ResizeMode

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 3


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


class HeadOutput(BaseModel):
    """One extra graph output of a multi-head model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="graph output name, e.g. mask_logits")
    head: str = Field(description="the head's label, e.g. mask, gender, age_group or age")
    kind: Literal["logits", "regression"]
    shape: list[int | str] = Field(description="e.g. ['batch', 3] for logits, ['batch'] for a regression")
    class_names: list[str] = Field(default_factory=list, description="logits heads: name of each column")
    unit: str = Field(default="", description="regression heads: the unit of the value, e.g. years")


class OutputContract(BaseModel):
    """Graph outputs. The first output, ``name``, is always ``[N, num_classes]`` logits.

    A three-head export adds one output per head after it, described in ``head_outputs``; a service
    that reads only the first output needs no change. ``combination`` states how the first output is
    computed from the heads.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "logits"
    kind: Literal["logits"] = "logits"
    heads: Literal["single", "three"] = "single"
    combination: str = ""
    head_outputs: list[HeadOutput] = Field(default_factory=list)
    age_cutoffs: list[int] | None = Field(
        default=None, description="first ages in years of age groups 1 and 2, for a regressed age"
    )

    @property
    def names(self) -> list[str]:
        """Return every graph output name in graph order."""
        return [self.name, *(head.name for head in self.head_outputs)]


class GoldenSample(BaseModel):
    """An encoded validation image and the top-5 output the export produced for it."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="path relative to the export folder, e.g. golden/000.png")
    class_ids: list[int] = Field(min_length=1, description="top-5 class indices, best first")
    scores: list[float] = Field(min_length=1, description="softmax probabilities of class_ids")


class Variant(BaseModel):
    """A reduced-precision ONNX graph beside the fp32 one, with the same input and output."""

    model_config = ConfigDict(extra="forbid")

    file: str
    precision: Literal["int8", "fp16"]
    parity: dict[str, float] = Field(description="differences against the fp32 ONNX graph")
    tolerance: float = Field(description="maximum absolute probability difference allowed")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="validation accuracy and macro F1 of fp32 and of this variant"
    )
    notes: str = ""


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
    exporter: str = Field(description="the ONNX exporter used: 'dynamo' or 'torchscript'")
    exporter_notes: str = Field(default="", description="why another exporter was not used, if one failed")
    torchscript_method: Literal["script", "trace"]
    versions: dict[str, str]
    files: dict[str, str] = Field(description="sha256 hex digest of every artifact, by relative path")
    parity: dict[str, float] = Field(
        description="eager PyTorch against each engine: max absolute logit and probability "
        "differences, top-1 agreement, and row-by-row batch consistency"
    )
    parity_tolerance: float
    golden: list[GoldenSample] = Field(default_factory=list)
    golden_tolerance: float = Field(default=1e-3, description="max absolute probability difference")
    variants: dict[str, Variant] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict, description="validation metrics from training")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model_dir(model_dir: str | Path) -> Path:
    """Return the version folder to load: ``model_dir`` itself, or its highest integer version."""
    model_dir = Path(model_dir)
    if (model_dir / MANIFEST_NAME).is_file():
        return model_dir
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    versions = [
        child
        for child in model_dir.iterdir()
        if child.is_dir() and child.name.isdigit() and (child / MANIFEST_NAME).is_file()
    ]
    if not versions:
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {model_dir} or in an integer version folder below it: point "
            "MODEL_DIR at a folder written by 'python -m training export'"
        )
    return max(versions, key=lambda child: int(child.name))


def load_manifest(model_dir: str | Path) -> Manifest:
    """Read and validate ``manifest.json`` from an export folder (see ``resolve_model_dir``)."""
    path = resolve_model_dir(model_dir) / MANIFEST_NAME
    return Manifest.model_validate_json(path.read_text(encoding="utf-8"))


def verify_files(model_dir: str | Path, manifest: Manifest) -> None:
    """Check every artifact against its sha256 in the manifest; raise naming the first mismatch."""
    model_dir = resolve_model_dir(model_dir)
    for file_name, expected in manifest.files.items():
        path = model_dir / file_name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ValueError(f"{path}: sha256 {actual} does not match the manifest's {expected}")
