import io

import numpy as np
import pytest
from PIL import Image

from serving.preprocess import ImageDecodeError, ImageSpec, decode_image, load_array


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
