"""Read the images of a ``POST /predict`` request, within the request limits, without decoding them.

Three body kinds are accepted, chosen by the request's Content-Type:
- ``multipart/form-data``: one or more files in the field ``images``.
- ``application/json`` (or ``*+json``): ``{"images": [{"data": "<base64>", "name": "a.png"}]}``.
- anything else, or none: the body is one encoded image file. ``curl --data-binary @a.png`` sends
  ``application/x-www-form-urlencoded``, so that type is read as an image too.

The Content-Type only selects how to split the body; the image format always comes from the bytes.
The body streams in chunk by chunk and is rejected as soon as it passes the byte limit or the image
count, so an oversized request is never held in memory whole.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote

from pydantic import ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from serving.errors import ClientError
from serving.limits import RequestLimits
from serving.schemas import Base64Request

IMAGES_FIELD = "images"
RAW_BODY_NAME = "body"
_EXTENDED_FILENAME = re.compile(r"filename\*\s*=\s*([^']*)'[^']*'([^;\s]+)", re.IGNORECASE)


@dataclass(frozen=True)
class ImagePart:
    """One encoded image of a request and the name that identifies it in responses and errors."""

    name: str
    data: bytes


def _empty_image(name: str) -> ClientError:
    return ClientError(400, "invalid_image", f"{name}: empty file", name)


def _too_many_images(count: int, limits: RequestLimits) -> ClientError:
    return ClientError(
        413,
        "too_many_images",
        f"the request has {count} or more images, over the limit of {limits.max_images} images per "
        f"request ({limits.env_name('max_images')}); split it into smaller requests",
    )


def _body_too_large(limits: RequestLimits, size: int | None = None) -> ClientError:
    size_text = f"{size:,} bytes" if size is not None else "larger than that"
    return ClientError(
        413,
        "request_too_large",
        f"the request body is {size_text}, over the limit of {limits.max_request_bytes:,} bytes "
        f"({limits.env_name('max_request_bytes')})",
    )


def check_declared_length(headers: Headers, limits: RequestLimits) -> None:
    """Reject a request whose Content-Length is over the byte limit before reading its body."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise _body_too_large(limits, int(declared))


async def _bounded_chunks(stream: AsyncIterator[bytes], limits: RequestLimits) -> AsyncIterator[bytes]:
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise _body_too_large(limits)
            yield chunk
    except ClientDisconnect:
        raise ClientError(
            400, "client_disconnected", "the client disconnected before sending the whole body"
        ) from None


async def read_body(stream: AsyncIterator[bytes], limits: RequestLimits) -> bytes:
    """Read a whole body, raising 413 as soon as it passes the byte limit."""
    return b"".join([chunk async for chunk in _bounded_chunks(stream, limits)])


def _filename(disposition: bytes) -> str | None:
    """Return the file name of a Content-Disposition value, decoding RFC 5987 ``filename*``."""
    extended = _EXTENDED_FILENAME.search(disposition.decode("latin-1"))
    if extended is not None:
        charset = extended.group(1) or "utf-8"
        try:
            return unquote(extended.group(2), encoding=charset, errors="replace")
        except LookupError:
            return unquote(extended.group(2), errors="replace")
    _, options = parse_options_header(disposition)
    filename = options.get(b"filename")
    return filename.decode("utf-8", errors="replace") if filename is not None else None


class _MultipartCollector:
    """Callbacks for python-multipart's streaming parser that collect the ``images`` files."""

    def __init__(self, limits: RequestLimits):
        self.limits = limits
        self.parts: list[ImagePart] = []
        self.finished = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._name = ""
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": lambda data, start, end: self._data.extend(data[start:end]),
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._data = bytearray()

    def _on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        index = len(self.parts)
        disposition = self._headers.get("content-disposition", b"")
        _, options = parse_options_header(disposition)
        field = options.get(b"name", b"").decode("utf-8", errors="replace")
        if field != IMAGES_FIELD:
            raise ClientError(
                400,
                "unknown_field",
                f"unexpected form field {field!r}: send each image as a file in the field '{IMAGES_FIELD}'",
                field,
            )
        filename = _filename(disposition)
        if filename is None:
            raise ClientError(
                400,
                "not_a_file",
                f"part {index} of field '{IMAGES_FIELD}' is a text value, not a file: send each image "
                "as a file (a URL or other text is not fetched)",
                f"{IMAGES_FIELD}[{index}]",
            )
        if index + 1 > self.limits.max_images:
            raise _too_many_images(index + 1, self.limits)
        self._name = filename or f"{IMAGES_FIELD}[{index}]"

    def _on_part_end(self) -> None:
        if not self._data:
            raise _empty_image(self._name)
        self.parts.append(ImagePart(self._name, bytes(self._data)))

    def _on_end(self) -> None:
        self.finished = True


async def read_multipart(
    stream: AsyncIterator[bytes], content_type: str, limits: RequestLimits
) -> list[ImagePart]:
    """Parse a multipart body as it streams in; every part must be a file in the field ``images``."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ClientError(400, "invalid_multipart", "the multipart Content-Type has no boundary parameter")
    collector = _MultipartCollector(limits)
    parser = MultipartParser(boundary, collector.callbacks())
    try:
        async for chunk in _bounded_chunks(stream, limits):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ClientError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    if not collector.finished:
        raise ClientError(
            400,
            "invalid_multipart",
            "the multipart body ends before its closing boundary (truncated upload?)",
        )
    return collector.parts


def decode_base64(text: str, item: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding, or a base64 data URI."""
    if text.startswith("data:"):
        header, separator, text = text.partition(",")
        if not separator or not header.endswith(";base64"):
            raise ClientError(
                400, "invalid_base64", f"{item}: a data URI must be base64 ('data:...;base64,')", item
            )
    text = "".join(text.split())
    altchars = b"-_" if ("-" in text or "_" in text) else None
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ClientError(400, "invalid_base64", f"{item}: invalid base64 data: {exc}", item) from None


def parse_json_images(body: bytes, limits: RequestLimits) -> list[ImagePart]:
    """Parse ``{"images": [{"data": ..., "name": ...}]}`` and decode each image's base64."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ClientError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    images = payload.get(IMAGES_FIELD) if isinstance(payload, dict) else None
    if isinstance(images, list) and len(images) > limits.max_images:
        raise _too_many_images(len(images), limits)
    try:
        request = Base64Request.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(part) for part in error["loc"]) or "body"
        raise ClientError(
            400,
            "invalid_request",
            f'{location}: {error["msg"]}; expected {{"images": [{{"data": "<base64>", "name": "a.png"}}]}}',
            location,
        ) from None
    parts = []
    for index, image in enumerate(request.images):
        name = image.name or f"{IMAGES_FIELD}[{index}]"
        data = decode_base64(image.data, name)
        if not data:
            raise _empty_image(name)
        parts.append(ImagePart(name, data))
    return parts


async def read_image_parts(request: Request, limits: RequestLimits) -> list[ImagePart]:
    """Return the encoded images of a request in order; raise ClientError for a bad request."""
    check_declared_length(request.headers, limits)
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        parts = await read_multipart(request.stream(), content_type, limits)
    elif media_type == "application/json" or media_type.endswith("+json"):
        parts = parse_json_images(await read_body(request.stream(), limits), limits)
    else:
        data = await read_body(request.stream(), limits)
        name = _filename(request.headers.get("content-disposition", "").encode("latin-1")) or RAW_BODY_NAME
        if not data:
            raise ClientError(
                400,
                "invalid_image",
                "the request body is empty: send an image file as the body, files in the multipart "
                f"field '{IMAGES_FIELD}', or JSON with base64 images",
                name,
            )
        parts = [ImagePart(name, data)]
    if not parts:
        raise ClientError(400, "no_images", f"the request has no images in the field '{IMAGES_FIELD}'")
    return parts
