import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from serving.preprocess import (
    CHANNELS,
    ImageDecodeError,
    ImageSpec,
    ImageTooLargeError,
    UnsupportedFormatError,
    decode_image,
    load_array,
    open_image,
    to_8bit_grayscale,
    to_array,
)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("data", [b"", b"plain text", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_invalid_bytes_rejected(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_truncated_jpeg_rejected():
    data = encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_exif_orientation_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)


def test_rgba_composited_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    array = load_array(encode(image), ImageSpec(4, 4, "RGB"))
    assert array.shape == (4, 4, 3)
    assert (array == 255).all()


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3)])
def test_output_shape_and_dtype(mode, channels):
    image = Image.new("RGB", (30, 10), (0, 128, 255))
    array = load_array(encode(image), ImageSpec(8, 6, mode))
    assert array.shape == (8, 6, channels)
    assert array.dtype == np.uint8


def test_center_crop_keeps_aspect():
    image = Image.new("L", (40, 10), 0)
    image.paste(255, (15, 0, 25, 10))  # a white band in the middle 10 columns
    array = load_array(encode(image), ImageSpec(10, 10, "L", resize="center_crop"))
    assert array.mean() > 200


def test_spec_rejects_unknown_color_mode():
    with pytest.raises(ValueError, match="color_mode"):
        ImageSpec(8, 8, "CMYK")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width`` x ``height`` grayscale pixels but contains one row of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    one_row = zlib.compress(b"\x00" * (width + 1))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", one_row)
        + png_chunk(b"IEND", b"")
    )


def image_of_mode(mode: str) -> Image.Image:
    """A 4x4 image of ``mode`` whose left half is dark and right half bright."""
    if mode in ("I;16", "I;16B", "I;16L"):
        byte_order = ">" if mode == "I;16B" else "<"
        values = np.array([[0, 0, 65535, 65535]] * 4, dtype=f"{byte_order}u2")
        return Image.frombytes(mode, (4, 4), values.tobytes())
    if mode == "I":
        return Image.fromarray(np.array([[0, 0, 65535, 65535]] * 4, dtype=np.int32))
    if mode == "F":
        return Image.fromarray(np.array([[0.0, 0.0, 1.0, 1.0]] * 4, dtype=np.float32))
    image = Image.new("RGB", (4, 4), (0, 0, 0))
    image.paste((255, 255, 255), (2, 0, 4, 4))
    return image.convert(mode)


@pytest.mark.parametrize(
    "mode", ["1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I;16", "I;16B", "I;16L", "I", "F"]
)
@pytest.mark.parametrize("color_mode", ["L", "RGB"])
def test_convert_every_mode(mode, color_mode):
    array = to_array(image_of_mode(mode), ImageSpec(4, 4, color_mode))
    assert array.shape == (4, 4, CHANNELS[color_mode])
    assert array.dtype == np.uint8
    assert array[:, :2].mean() < 30, "dark half"
    assert array[:, 2:].mean() > 225, "bright half"


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "RGBa", "La"])
def test_transparent_modes_composited(mode):
    transparent = Image.new(mode, (4, 4))  # every band 0, so alpha is 0
    array = to_array(transparent, ImageSpec(4, 4, "RGB"))
    assert (array == 255).all()


def test_palette_transparency_composited():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.info["transparency"] = 0
    array = load_array(encode(image), ImageSpec(4, 4, "RGB"))
    assert (array == 255).all()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0, 257, 32896, 65535]], dtype=np.uint16), [0, 1, 128, 255]),
        (np.array([[1000, 2000, 3000, 4000]], dtype=np.uint16), [4, 8, 12, 16]),
    ],
)
def test_sixteen_bit_png_rescaled(values, expected):
    decoded = decode_image(encode(Image.fromarray(values)))
    assert decoded.mode == "I;16"
    assert list(np.asarray(to_8bit_grayscale(decoded))[0]) == expected


def test_thirty_two_bit_beyond_sixteen_stretched():
    values = np.array([[-100000, 0, 100000]], dtype=np.int32)
    assert list(np.asarray(to_8bit_grayscale(Image.fromarray(values)))[0]) == [0, 128, 255]


def test_float_outside_unit_range_stretched():
    values = np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)
    assert list(np.asarray(to_8bit_grayscale(Image.fromarray(values)))[0]) == [0, 128, 255]


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("I;16", "TIFF"), ("I", "TIFF"), ("F", "TIFF"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("1", "PNG")],
)
def test_high_depth_files_decode(mode, fmt):
    array = load_array(encode(image_of_mode(mode), fmt), ImageSpec(4, 4, "L"))
    assert array[:, 2:].mean() > array[:, :2].mean() + 100


def test_multi_frame_uses_first_frame():
    frames = [Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 255)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    array = load_array(data, ImageSpec(4, 4, "L"))
    assert (array == 0).all()


@pytest.mark.parametrize(
    ("data", "format_name"),
    [
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 16, "HEIF"),
        (b"%PDF-1.7\n", "PDF"),
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
        (b"\xff\x4f\xff\x51" + b"\x00" * 16, "JPEG 2000"),
        (b"8BPS" + b"\x00" * 20, "PSD"),
    ],
)
def test_unsupported_format_named(data, format_name):
    with pytest.raises(UnsupportedFormatError, match=format_name):
        decode_image(data)


def test_pixel_limit_checked_from_header():
    data = png_header_only(10_000, 5_000)
    with pytest.raises(ImageTooLargeError, match="50,000,000 pixels"):
        open_image(data, max_pixels=40_000_000)


def test_decompression_bomb_is_too_large():
    with pytest.raises(ImageTooLargeError):
        open_image(png_header_only(100_000, 100_000), max_pixels=40_000_000)


def test_pixel_limit_allows_exact_size():
    data = encode(Image.new("L", (10, 10), 0))
    assert open_image(data, max_pixels=100).size == (10, 10)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_files_rejected(fmt):
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).convert("RGB"), fmt)
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])
