"""Decode and resize rule shared by training, export and serving.

This module is the one place that turns encoded image bytes into the pixels a model sees. Training
imports it for its data sets and evaluation transform and the service imports it for every request,
so both see the same pixels. It depends on Pillow and NumPy only: no torch.

The rule, in order:
1. Identify the format from the bytes, never from a file name or a Content-Type. JPEG (and MPO, the
   multi-picture JPEG of some cameras), PNG, GIF, BMP, TIFF, WebP, PPM/PGM and AVIF are decoded.
   Another image format (HEIF, JPEG 2000, SVG, PDF, ...) raises ``UnsupportedFormatError``, and bytes
   that are no image raise ``ImageDecodeError``.
2. Check the pixel count from the header, before any pixel is decoded (``ImageTooLargeError``).
3. Decode the first frame only: an animated GIF, APNG, WebP or multi-page TIFF gives its first frame.
4. Apply the EXIF orientation tag, so a photo taken on its side is upright.
5. Convert to the model's color mode (``L`` or ``RGB``):
   - RGBA, LA, PA, premultiplied RGBa/La and P or L with a transparent color are composited on an
     opaque white background (``TRANSPARENT_BACKGROUND``), the way browsers show them on a white page.
   - 16-bit grayscale (``I;16*``) is rescaled from 0..65535 to 0..255. 32-bit integer grayscale
     (``I``) uses the same scale when its values lie in 0..65535 and is otherwise stretched from
     its own minimum to its maximum. 32-bit float grayscale (``F``) in 0..1 is scaled by 255 and is
     otherwise stretched from its minimum to its maximum. Nothing is clipped.
   - CMYK, YCbCr, LAB and HSV go through RGB with Pillow's conversions; 1-bit becomes 0 and 255.
6. Resize to the model's input size with bilinear interpolation. ``stretch`` resizes straight to
   height x width; ``center_crop`` first crops the largest centered box with the target aspect ratio.
7. Return a ``uint8`` array of shape ``[height, width, channels]`` (HWC).
"""

from __future__ import annotations

import functools
import io
import struct
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
# Pillow format names that are decoded. MPO is the name Pillow gives a multi-picture JPEG.
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "AVIF")
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Errors Pillow's decoders raise on corrupt or truncated data, beyond OSError.
_CORRUPT_DATA_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error, IndexError)


class ImageDecodeError(ValueError):
    """Raised when bytes are empty, not an image, or a truncated or corrupt image."""


class UnsupportedFormatError(ImageDecodeError):
    """Raised when the bytes are an image in a format this rule does not decode."""

    def __init__(self, format_name: str, reason: str = "images are not supported"):
        self.format_name = format_name
        allowed = ", ".join(_registered_formats())
        super().__init__(f"{format_name} {reason}; supported formats: {allowed}")


class ImageTooLargeError(ImageDecodeError):
    """Raised when an image has more pixels than allowed; raised before its pixels are decoded."""

    def __init__(self, size: str, max_pixels: int):
        self.max_pixels = max_pixels
        super().__init__(f"image is {size}, over the limit of {max_pixels:,} pixels")


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


def sniff_unsupported_format(data: bytes) -> str | None:
    """Name the image format of ``data`` from its signature when it is one this rule does not decode."""
    head = data[:64]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIF"
    signatures = (
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"\xff\x4f\xff\x51", "JPEG 2000"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
        (b"\xff\x0a", "JPEG XL"),
        (b"%PDF", "PDF"),
        (b"%!PS", "PostScript"),
        (b"\xc5\xd0\xd3\xc6", "EPS"),
        (b"8BPS", "PSD"),
        (b"\x00\x00\x01\x00", "ICO"),
        (b"DDS ", "DDS"),
        (b"qoif", "QOI"),
        (b"\x76\x2f\x31\x01", "OpenEXR"),
        (b"#?RADIANCE", "Radiance HDR"),
    )
    for signature, name in signatures:
        if head.startswith(signature):
            return name
    text_head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text_head.startswith(b"<svg") or (text_head.startswith(b"<?xml") and b"<svg" in text_head):
        return "SVG"
    if data[128:132] == b"DICM":
        return "DICOM"
    return None


@functools.cache
def _registered_formats() -> tuple[str, ...]:
    """Return the supported formats this Pillow build has a decoder for (AVIF is optional)."""
    Image.init()
    return tuple(name for name in SUPPORTED_FORMATS if name in Image.OPEN)


def open_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Identify the format and check the size from the header; no pixel is decoded yet.

    Raises ImageDecodeError (empty or not an image), UnsupportedFormatError or ImageTooLargeError.
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=_registered_formats())
    except Image.DecompressionBombError as exc:
        # NOTE: Pillow refuses images over twice Image.MAX_IMAGE_PIXELS (178,956,970 pixels in
        # Pillow 13) in open(), so a max_pixels above that has no effect past it.
        bomb_limit = 2 * Image.MAX_IMAGE_PIXELS
        limit = max_pixels if max_pixels is not None else bomb_limit
        raise ImageTooLargeError(f"over {bomb_limit:,} pixels", limit) from exc
    except UnidentifiedImageError as exc:
        format_name = sniff_unsupported_format(data)
        if format_name is not None:
            raise UnsupportedFormatError(format_name) from exc
        raise ImageDecodeError("not a recognized image format") from exc
    except _CORRUPT_DATA_ERRORS as exc:
        raise ImageDecodeError(f"corrupt image header: {exc}") from exc
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f"{width}x{height} = {width * height:,} pixels", max_pixels)
    return image


def load_frame(image: Image.Image) -> Image.Image:
    """Decode the first frame of an image from ``open_image`` and apply its EXIF orientation.

    Raises ImageDecodeError when the data is truncated or corrupt.
    """
    try:
        # Image.open leaves a multi-frame file at its first frame, and load() decodes only that
        # frame. Reading n_frames would scan every frame, which costs time on a crafted file.
        # load() decodes every pixel now, so a truncated file fails here and not later.
        image.load()
        return ImageOps.exif_transpose(image)
    except _CORRUPT_DATA_ERRORS as exc:
        raise ImageDecodeError(f"truncated or corrupt {image.format} data: {exc}") from exc


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode the first frame of encoded image bytes and apply the EXIF orientation.

    Raises ImageDecodeError when the bytes are empty, not an image, truncated or corrupt, and its
    subclasses UnsupportedFormatError and ImageTooLargeError (see ``open_image``).
    """
    return load_frame(open_image(data, max_pixels))


def _stretch_to_uint8(values: np.ndarray, low: float, high: float) -> Image.Image:
    """Map ``low..high`` linearly onto 0..255; a constant image maps to 0."""
    values = np.nan_to_num(values.astype(np.float64), nan=low, posinf=high, neginf=low)
    scale = 255.0 / (high - low) if high > low else 0.0
    pixels = np.clip(np.round((values - low) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


def to_8bit_grayscale(image: Image.Image) -> Image.Image:
    """Rescale 16-bit and 32-bit grayscale to ``L`` by the module's rule, never clipping."""
    values = np.asarray(image)
    if image.mode in SIXTEEN_BIT_MODES:
        return _stretch_to_uint8(values, 0.0, 65535.0)
    finite = values[np.isfinite(values)] if image.mode == "F" else values
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    if image.mode == "I" and low >= 0 and high <= 65535:
        return _stretch_to_uint8(values, 0.0, 65535.0)
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        return _stretch_to_uint8(values, 0.0, 1.0)
    return _stretch_to_uint8(values, low, high)


def _has_transparency(image: Image.Image) -> bool:
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return True
    return image.mode in ("P", "L", "RGB") and "transparency" in image.info


def _composite_on_background(image: Image.Image) -> Image.Image:
    if image.mode == "La":
        # Pillow has no conversion from premultiplied La; LA is its unpremultiplied form.
        image = image.convert("LA")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def convert_color(image: Image.Image, color_mode: ColorMode) -> Image.Image:
    """Convert an image of any Pillow mode to ``L`` or ``RGB`` by the module's rule."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        image = to_8bit_grayscale(image)
    elif _has_transparency(image):
        image = _composite_on_background(image)
    elif image.mode in ("LAB", "HSV", "CMYK", "YCbCr", "RGBX"):
        # Pillow converts these to RGB but not all of them straight to L.
        image = image.convert("RGB")
    if image.mode == color_mode:
        return image
    try:
        return image.convert(color_mode)
    except ValueError as exc:
        # Every mode of Pillow 13 converts; this guards modes that other Pillow versions add.
        raise UnsupportedFormatError(
            f"{image.format or 'an'} image with pixel mode {image.mode}", "is not supported"
        ) from exc


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


def load_array(source: bytes | str | Path, spec: ImageSpec, max_pixels: int | None = None) -> np.ndarray:
    """Decode bytes or a file and return model-ready ``uint8`` HWC pixels."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return to_array(decode_image(data, max_pixels), spec)
