"""Training configuration: pydantic models, a YAML file, and ``--set key.path=value`` overrides.

The YAML file holds defaults for a run; ``--set`` overrides win over it. Every section forbids
unknown keys, so a typo is an error that names the key instead of a setting silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    dataset: Literal["digits", "folder", "mask"] = "digits"
    root: Path | None = Field(default=None, description="data folder; required unless dataset is digits")
    image_size: int = Field(default=32, gt=0, description="square input size in pixels")
    color_mode: Literal["L", "RGB"] = "L"
    resize: Literal["stretch", "center_crop"] = "stretch"
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    batch_size: int = Field(default=64, gt=0)
    num_workers: int = Field(default=0, ge=0)
    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.5])
    age_cutoffs: tuple[int, int] = Field(
        default=(30, 60), description="mask: first ages in years of age groups 1 and 2"
    )
    skip_invalid_folders: bool = Field(
        default=False, description="mask: skip folders whose names do not parse, with a warning"
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        channels = 1 if self.color_mode == "L" else 3
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"data.mean and data.std need {channels} values for color_mode {self.color_mode}, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(value <= 0 for value in self.std):
            raise ValueError(f"data.std values must be positive, got {self.std}")
        if self.dataset != "digits" and self.root is None:
            raise ValueError(f"data.root is required for dataset {self.dataset!r}")
        low, high = self.age_cutoffs
        if not 0 < low < high:
            raise ValueError(f"data.age_cutoffs must satisfy 0 < first < second, got [{low}, {high}]")
        return self


class AugmentConfig(_Section):
    hflip: float = Field(default=0.0, ge=0.0, le=1.0, description="horizontal flip probability")
    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = Field(default=(0.8, 1.0), description="crop area / image area")
    crop_ratio: tuple[float, float] = Field(default=(3 / 4, 4 / 3), description="crop width / height")
    color_jitter: float = Field(default=0.0, ge=0.0, description="brightness/contrast/saturation")
    rotation: float = Field(default=0.0, ge=0.0, description="max rotation in degrees")

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"augment.crop_scale must satisfy 0 < min <= max <= 1, got [{low}, {high}]")
        low, high = self.crop_ratio
        if not 0.0 < low <= high:
            raise ValueError(f"augment.crop_ratio must satisfy 0 < min <= max, got [{low}, {high}]")
        return self


class ModelConfig(_Section):
    name: str = Field(default="resnet18", description="any timm model name")
    pretrained: Path | None = Field(default=None, description="local weights file; nothing is downloaded")
    drop_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    heads: Literal["single", "three"] = Field(
        default="single",
        description="single: one head over all classes; three: mask, gender and age heads (dataset mask)",
    )
    age_head: Literal["classification", "regression"] = Field(
        default="classification", description="three heads: 3 age-group logits, or the age in years"
    )
    age_loss: Literal["smooth_l1", "mse"] = Field(
        default="smooth_l1", description="loss of the age regression head, in years or squared years"
    )
    head_weights: dict[Literal["mask", "gender", "age"], float] = Field(
        default_factory=dict, description="three heads: weight of each head's loss in the sum (default 1)"
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.heads == "single" and (self.age_head != "classification" or self.head_weights):
            raise ValueError(
                "model.age_head and model.head_weights apply to model.heads three; "
                f"got heads {self.heads!r}, age_head {self.age_head!r}, head_weights {self.head_weights}"
            )
        if any(weight < 0 for weight in self.head_weights.values()):
            raise ValueError(f"model.head_weights must not be negative, got {self.head_weights}")
        return self


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(default=1e-3, gt=0.0, description="base learning rate; the peak for onecycle")
    weight_decay: float = Field(default=0.0, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="sgd only")
    nesterov: bool = Field(default=False, description="sgd only; needs momentum > 0")

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0.0):
            raise ValueError(
                f"optimizer.nesterov needs optimizer.name sgd and momentum > 0, "
                f"got name {self.name!r} and momentum {self.momentum}"
            )
        return self


class SchedulerConfig(_Section):
    """Learning-rate schedule: steplr and multisteplr step once per epoch, cosine and onecycle once
    per optimizer step."""

    name: Literal["none", "steplr", "multisteplr", "cosine", "onecycle"] = "steplr"
    step_size: int = Field(default=5, gt=0, description="epochs between decays (steplr)")
    milestones: list[int] = Field(default_factory=lambda: [10, 20], description="epochs (multisteplr)")
    gamma: float = Field(default=0.5, gt=0.0, le=1.0, description="decay factor (steplr, multisteplr)")
    warmup_epochs: float = Field(default=0.0, ge=0.0, description="linear warmup length (cosine)")
    min_lr: float = Field(default=0.0, ge=0.0, description="final learning rate (cosine)")
    pct_start: float = Field(default=0.3, gt=0.0, lt=1.0, description="rising share of steps (onecycle)")
    div_factor: float = Field(default=25.0, gt=1.0, description="optimizer.lr / initial lr (onecycle)")
    final_div_factor: float = Field(default=1e4, gt=1.0, description="initial lr / final lr (onecycle)")

    @model_validator(mode="after")
    def _check(self) -> SchedulerConfig:
        if self.warmup_epochs > 0 and self.name != "cosine":
            raise ValueError(
                f"lr_scheduler.warmup_epochs applies to cosine only, got name {self.name!r}; "
                "set warmup_epochs to 0 or name to cosine"
            )
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError(f"lr_scheduler.milestones must be increasing, got {self.milestones}")
        return self


class LossConfig(_Section):
    name: Literal["cross_entropy", "focal", "label_smoothing", "soft_f1"] = "cross_entropy"
    label_smoothing: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="smoothing epsilon (cross_entropy, label_smoothing)"
    )
    focal_gamma: float = Field(default=2.0, ge=0.0, description="focusing exponent (focal)")
    class_weights: Literal["none", "balanced"] | list[float] = Field(
        default="none",
        description="'balanced' (n_samples / (num_classes * class count)) or one weight per class",
    )

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        if self.name == "label_smoothing" and self.label_smoothing == 0.0:
            raise ValueError("loss.label_smoothing must be > 0 (e.g. 0.1) for loss.name label_smoothing")
        if self.name in ("focal", "soft_f1") and self.label_smoothing > 0.0:
            raise ValueError(
                f"loss.label_smoothing applies to cross_entropy and label_smoothing, not {self.name!r}; "
                "set it to 0"
            )
        if isinstance(self.class_weights, list) and any(w < 0 for w in self.class_weights):
            raise ValueError(f"loss.class_weights must not be negative, got {self.class_weights}")
        return self


class TrainConfig(_Section):
    epochs: int = Field(default=10, gt=0)
    accumulation_steps: int = Field(default=1, gt=0, description="micro-batches per optimizer step")
    log_interval: int = Field(default=10, gt=0, description="optimizer steps between log lines")
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda[:N]'")
    output_dir: Path = Path("runs")
    deterministic: bool = True
    monitor: str = Field(
        default="macro_f1", description="validation metric that selects best.pt; 'loss' is minimized"
    )
    amp: Literal["off", "bf16", "fp16"] = Field(
        default="off", description="mixed precision on CUDA (fp16 adds a grad scaler); CPU runs fp32"
    )
    channels_last: bool = Field(default=False, description="NHWC memory format on CUDA")
    sampler: Literal["shuffle", "weighted"] = Field(
        default="shuffle", description="'weighted' draws classes equally often (with replacement)"
    )
    tensorboard: bool = Field(default=True, description="write TensorBoard event files to the run")
    tta: Literal["none", "hflip"] = Field(default="none", description="test-time augmentation")
    limit_train_batches: int | None = Field(
        default=None, gt=0, description="micro-batches per epoch and process (quick checks)"
    )
    limit_val_batches: int | None = Field(
        default=None, gt=0, description="validation batches per process (quick checks)"
    )


class Config(_Section):
    name: str = "digits"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    lr_scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


class ConfigError(ValueError):
    """Raised for an unreadable config file, a bad override or an invalid value."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into a key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated config from an optional YAML file and ``key.path=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    for text in overrides:
        key_path, value = parse_override(text)
        apply_override(data, key_path, value)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path)) from exc


def format_validation_error(exc: ValidationError, path: Path | None) -> str:
    source = f" in {path}" if path else ""
    lines = [f"invalid configuration{source}:"]
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        value = f" (got {error['input']!r})" if "input" in error and error["type"] != "missing" else ""
        lines.append(f"  {location}: {error['msg']}{value}")
    return "\n".join(lines)


def dump_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
