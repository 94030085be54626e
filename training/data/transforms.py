"""Train and evaluation transforms: PIL image in, normalized float tensor ``[C, H, W]`` out.

The evaluation transform resizes with ``serving.preprocess``, the rule the service uses, so offline
evaluation and the service see the same pixels. Augmentations run on uint8 tensors (torchvision
transforms v2) before the conversion to float.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2

from serving.preprocess import ImageSpec, convert_color, to_array
from training.config import AugmentConfig, DataConfig


def image_spec(data: DataConfig) -> ImageSpec:
    return ImageSpec(data.image_size, data.image_size, data.color_mode, data.resize)


class ServingResize:
    """Apply the serving decode-and-resize rule and return a uint8 tensor ``[C, H, W]``."""

    def __init__(self, spec: ImageSpec):
        self.spec = spec

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(to_array(image, self.spec)).permute(2, 0, 1).contiguous()


class ConvertColor:
    def __init__(self, color_mode: str):
        self.color_mode = color_mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return convert_color(image, self.color_mode)


def _normalize(data: DataConfig) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=data.mean, std=data.std)]


def build_eval_transform(data: DataConfig) -> v2.Compose:
    """Deterministic: the serving resize, then scaling to 0..1 and normalization."""
    return v2.Compose([ServingResize(image_spec(data)), *_normalize(data)])


def build_train_transform(data: DataConfig, augment: AugmentConfig) -> v2.Compose:
    steps: list = []
    if augment.random_resized_crop:
        steps += [
            ConvertColor(data.color_mode),
            v2.PILToTensor(),
            v2.RandomResizedCrop(
                data.image_size, scale=augment.crop_scale, ratio=augment.crop_ratio, antialias=True
            ),
        ]
    else:
        steps.append(ServingResize(image_spec(data)))
    if augment.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=augment.hflip))
    if augment.rotation > 0:
        steps.append(v2.RandomRotation(augment.rotation))
    if augment.color_jitter > 0:
        saturation = augment.color_jitter if data.color_mode == "RGB" else 0.0
        steps.append(
            v2.ColorJitter(
                brightness=augment.color_jitter, contrast=augment.color_jitter, saturation=saturation
            )
        )
    return v2.Compose([*steps, *_normalize(data)])
