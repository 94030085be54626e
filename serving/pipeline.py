"""The per-request steps around the model call: decode a request's images, and build its response.

Decoding runs in the request's own thread, so one bad image fails only its own request and never a
batch that the model process merged from several requests.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from serving.engine import Postprocessor, TopClass
from serving.errors import ClientError
from serving.intake import ImagePart
from serving.limits import RequestLimits
from serving.manifest import Manifest
from serving.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedFormatError,
    load_frame,
    open_image,
    to_array,
)
from serving.schemas import ClassScore, Prediction, PredictResponse


def _client_error(part: ImagePart, exc: ImageDecodeError, limits: RequestLimits) -> ClientError:
    if isinstance(exc, ImageTooLargeError):
        return ClientError(
            413, "image_too_large", f"{part.name}: {exc} ({limits.env_name('max_pixels')})", part.name
        )
    if isinstance(exc, UnsupportedFormatError):
        return ClientError(415, "unsupported_format", f"{part.name}: {exc}", part.name)
    return ClientError(400, "invalid_image", f"{part.name}: {exc}", part.name)


def decode_parts(
    parts: list[ImagePart], postprocessor: Postprocessor, limits: RequestLimits
) -> list[np.ndarray]:
    """Return model-ready uint8 HWC pixels for each part, in order; raise ClientError on a bad one.

    Every header is read (format and pixel count) before the first image is decoded, so a request
    with one image over the pixel limit costs no pixel memory at all.
    """
    opened: list[Image.Image] = []
    for part in parts:
        try:
            opened.append(open_image(part.data, limits.max_pixels))
        except ImageDecodeError as exc:
            raise _client_error(part, exc, limits) from None
    arrays = []
    for part, image in zip(parts, opened, strict=True):
        try:
            arrays.append(to_array(load_frame(image), postprocessor.spec))
        except ImageDecodeError as exc:
            raise _client_error(part, exc, limits) from None
    return arrays


def build_response(manifest: Manifest, names: list[str], top: list[list[TopClass]]) -> PredictResponse:
    predictions = [
        Prediction(
            file=name,
            label=row[0].label,
            class_id=row[0].class_id,
            score=row[0].score,
            top5=[ClassScore(label=entry.label, score=entry.score) for entry in row],
        )
        for name, row in zip(names, top, strict=True)
    ]
    return PredictResponse(model=manifest.name, version=manifest.version, predictions=predictions)
