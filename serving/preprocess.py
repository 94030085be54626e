"""Decode and resize rule shared by training, export and serving.

This module is the one place that turns encoded image bytes into the pixels a model sees. Training
imports it for its evaluation transform and the service imports it for every request, so both see
the same pixels. It depends on Pillow and NumPy only: no torch.

The rule, in order:
1. Decode with Pillow. The format comes from the bytes, never from a file name or a Content-Type.
2. Apply the EXIF orientation tag, so a photo taken on its side is upright.
3. Convert to the model's color mode (``L`` or ``RGB``); transparent pixels are composited on white.
4. Resize to the model's input size with bilinear interpolation. ``stretch`` resizes straight to
   height x width; ``center_crop`` first crops the largest centered box with the target aspect ratio.
5. Return a ``uint8`` array of shape ``[height, width, channels]`` (HWC).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ColorMode = Literal["L", "RGB"]
ResizeMode = Literal["stretch", "center_crop"]

CHANNELS: dict[str, int] = {"L": 1, "RGB": 3}
# Background for transparent pixels. White matches how browsers and viewers show such images.
TRANSPARENT_BACKGROUND = (255, 255, 255)


class ImageDecodeError(ValueError):
    """Raised when bytes are not an image Pillow can decode."""


@dataclass(frozen=True)
class ImageSpec:
    """Input geometry of a model: the size and color mode its pixels must have."""

    height: int
    width: int
    color_mode: ColorMode = "RGB"
    resize: ResizeMode = "stretch"

    def __post_init__(self) -> None:
        if self.color_mode not in CHANNELS:
            raise ValueError(f"color_mode must be one of {sorted(CHANNELS)}, got {self.color_mode!r}")
        if self.resize not in ("stretch", "center_crop"):
            raise ValueError(f"resize must be 'stretch' or 'center_crop', got {self.resize!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be positive, got {self.height}x{self.width}")

    @property
    def channels(self) -> int:
        return CHANNELS[self.color_mode]


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes and apply the EXIF orientation.

    Raises ImageDecodeError when the bytes are empty, not an image, or truncated.
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        # load() decodes every pixel now, so a truncated file fails here and not later.
        image.load()
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognized image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    return ImageOps.exif_transpose(image)


def convert_color(image: Image.Image, color_mode: ColorMode) -> Image.Image:
    """Convert an image of any Pillow mode to ``L`` or ``RGB``."""
    if image.mode == color_mode:
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(color_mode)


def resize_image(image: Image.Image, spec: ImageSpec) -> Image.Image:
    """Resize to the spec's size by its resize mode, with bilinear interpolation."""
    if spec.resize == "center_crop":
        image = ImageOps.fit(image, (spec.width, spec.height), method=Image.Resampling.BILINEAR)
    elif image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    return image


def to_array(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Convert, resize and return the pixels as ``uint8`` HWC."""
    image = resize_image(convert_color(image, spec.color_mode), spec)
    array = np.array(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def load_array(source: bytes | str | Path, spec: ImageSpec) -> np.ndarray:
    """Decode bytes or a file and return model-ready ``uint8`` HWC pixels."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return to_array(decode_image(data), spec)
