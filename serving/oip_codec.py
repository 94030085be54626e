"""Open Inference Protocol (KServe v2) request and response bodies, with the binary tensor extension.

A request body is JSON. With the ``Inference-Header-Content-Length`` header, the body is that many
bytes of JSON followed by the raw data of each input whose ``parameters.binary_data_size`` is set, in
input order. This is Triton's binary tensor data extension, which ``tritonclient`` uses by default. Raw
numeric data is little-endian and row-major. A raw BYTES tensor is each element as a 4-byte
little-endian length followed by its bytes.

Inputs (exactly one per request):
- ``image_bytes`` (BYTES, shape ``[N]`` or ``[N, 1]``): encoded image files, decoded like
  ``POST /predict``. In JSON each element is a base64 string or ``{"b64": "<base64>"}``.
- the manifest's input name (``images``): the tensor of the manifest's contract, UINT8
  ``[N, H, W, C]`` or FP32 ``[N, C, H, W]``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import ClientError
from serving.intake import ImagePart, decode_base64
from serving.limits import RequestLimits
from serving.manifest import InputContract

HEADER_LENGTH = "inference-header-content-length"
BYTES_INPUT = "image_bytes"
DATATYPES = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}
CONTRACT_DATATYPE = {"uint8_nhwc": "UINT8", "float32_nchw": "FP32"}


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    """The inference request JSON object, without the binary data that may follow it."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


def bad_request(message: str, code: str = "invalid_request") -> ClientError:
    return ClientError(400, code, message)


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, list[bytes | None]]:
    """Split and validate a request body; return the request and each input's raw bytes or None."""
    json_part, raw = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise bad_request(
                f"Inference-Header-Content-Length {header_length!r} is not a byte count within the "
                f"{len(body)}-byte body"
            )
        json_part, raw = body[: int(header_length)], body[int(header_length) :]
    try:
        request = InferenceRequest.model_validate(json.loads(json_part))
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, ValidationError):
            error = exc.errors()[0]
            location = ".".join(str(part) for part in error["loc"]) or "body"
            raise bad_request(f"invalid inference request: {location}: {error['msg']}") from None
        raise bad_request(f"the inference request is not valid JSON: {exc}") from None
    return request, _split_raw(request, raw)


def _split_raw(request: InferenceRequest, raw: bytes) -> list[bytes | None]:
    chunks: list[bytes | None] = []
    offset = 0
    for tensor in request.inputs:
        size = tensor.parameters.get("binary_data_size")
        if size is None:
            chunks.append(None)
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(raw):
            raise bad_request(
                f"input {tensor.name!r}: binary_data_size {size!r} does not fit the {len(raw) - offset} "
                "bytes of binary data left in the body"
            )
        chunks.append(raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise bad_request(f"the body has {len(raw) - offset} bytes of binary data that no input claims")
    return chunks


def _batch_size(tensor: RequestInput, expected_rank: tuple[int, ...], limits: RequestLimits) -> int:
    if len(tensor.shape) not in expected_rank or any(dim < 0 for dim in tensor.shape):
        raise bad_request(f"input {tensor.name!r}: invalid shape {tensor.shape}", "invalid_shape")
    count = tensor.shape[0]
    if count < 1:
        raise bad_request(f"input {tensor.name!r}: shape {tensor.shape} has no image", "invalid_shape")
    if count > limits.max_images:
        raise ClientError(
            413,
            "too_many_images",
            f"input {tensor.name!r} has {count} images, over the limit of {limits.max_images} "
            f"({limits.env_name('max_images')})",
        )
    return count


def read_image_bytes(tensor: RequestInput, raw: bytes | None, limits: RequestLimits) -> list[ImagePart]:
    """Return the encoded images of a BYTES input, named ``image_bytes[i]``."""
    if tensor.datatype != "BYTES":
        raise bad_request(
            f"input {BYTES_INPUT!r} must have datatype BYTES, got {tensor.datatype}", "invalid_dtype"
        )
    count = _batch_size(tensor, (1, 2), limits)
    if len(tensor.shape) == 2 and tensor.shape[1] != 1:
        raise bad_request(
            f"input {BYTES_INPUT!r}: shape must be [N] or [N, 1], got {tensor.shape}", "invalid_shape"
        )
    elements = _split_bytes(raw) if raw is not None else _json_bytes(tensor.data)
    if len(elements) != count:
        raise bad_request(
            f"input {BYTES_INPUT!r}: shape {tensor.shape} needs {count} elements, got {len(elements)}",
            "invalid_shape",
        )
    return [ImagePart(f"{BYTES_INPUT}[{index}]", data) for index, data in enumerate(elements)]


def _split_bytes(raw: bytes) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise bad_request(f"BYTES data is truncated at byte {offset}: a 4-byte length prefix is missing")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise bad_request(
                f"BYTES element {len(elements)} claims {length} bytes; {len(raw) - offset} are left"
            )
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _json_bytes(data: Any) -> list[bytes]:
    if not isinstance(data, list):
        raise bad_request(f"input {BYTES_INPUT!r}: data must be a list of base64 strings", "invalid_data")
    flat = [item for row in data for item in row] if data and isinstance(data[0], list) else data
    elements = []
    for index, item in enumerate(flat):
        text = item.get("b64") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise bad_request(
                f'{BYTES_INPUT}[{index}]: expected a base64 string or {{"b64": ...}}, '
                f"got {type(item).__name__}",
                "invalid_data",
            )
        elements.append(decode_base64(text, f"{BYTES_INPUT}[{index}]"))
    return elements


def contract_shape(contract: InputContract) -> list[int]:
    channels = contract.image_spec.channels
    if contract.format == "uint8_nhwc":
        return [contract.height, contract.width, channels]
    return [channels, contract.height, contract.width]


def read_tensor(
    tensor: RequestInput, raw: bytes | None, contract: InputContract, limits: RequestLimits
) -> np.ndarray:
    """Return the input tensor in the contract's dtype and layout, checked element by element."""
    datatype = CONTRACT_DATATYPE[contract.format]
    if tensor.datatype != datatype:
        raise bad_request(
            f"input {tensor.name!r} must have datatype {datatype} (the model's {contract.format} "
            f"contract), got {tensor.datatype}; or send encoded images as BYTES in {BYTES_INPUT!r}",
            "invalid_dtype",
        )
    count = _batch_size(tensor, (4,), limits)
    expected = [count, *contract_shape(contract)]
    if tensor.shape != expected:
        raise bad_request(
            f"input {tensor.name!r}: shape must be {expected}, got {tensor.shape}", "invalid_shape"
        )
    dtype = DATATYPES[datatype]
    size = int(np.prod(expected))
    if raw is not None:
        if len(raw) != size * dtype.itemsize:
            raise bad_request(
                f"input {tensor.name!r}: shape {expected} of {datatype} needs {size * dtype.itemsize} "
                f"bytes, got {len(raw)}",
                "invalid_data",
            )
        array = np.frombuffer(raw, dtype=dtype).reshape(expected)
    else:
        array = _json_tensor(tensor, dtype, size).reshape(expected)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise bad_request(f"input {tensor.name!r} contains NaN or infinite values", "invalid_data")
    return np.ascontiguousarray(array.astype(dtype.newbyteorder("="), copy=False))


def _json_tensor(tensor: RequestInput, dtype: np.dtype, size: int) -> np.ndarray:
    try:
        values = np.asarray(tensor.data)
    except ValueError:
        raise bad_request(f"input {tensor.name!r}: data is a ragged nested list", "invalid_data") from None
    if values.size != size:
        raise bad_request(
            f"input {tensor.name!r}: shape needs {size} values, data has {values.size}", "invalid_data"
        )
    if values.dtype.kind not in ("i", "u", "f") or values.dtype.kind == "b":
        raise bad_request(
            f"input {tensor.name!r}: data must be numbers, got {values.dtype.kind!r} values", "invalid_data"
        )
    if dtype.kind == "u":
        if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
            raise bad_request(f"input {tensor.name!r}: UINT8 data must be integers", "invalid_data")
        if values.min() < 0 or values.max() > 255:
            raise bad_request(f"input {tensor.name!r}: UINT8 data must lie in 0..255", "invalid_data")
    return values.astype(dtype).ravel()


class OutputSpec(BaseModel):
    """One output to return: its name, top-k classification (0 for the raw tensor), and encoding."""

    name: str
    classification: int = 0
    binary: bool = False


def requested_outputs(
    request: InferenceRequest, output_names: tuple[str, ...], num_classes: int
) -> list[OutputSpec]:
    """Return the outputs to send: those requested, or every output when none is requested."""
    binary_default = request.parameters.get("binary_data_output") is True
    if not request.outputs:
        return [OutputSpec(name=name, binary=binary_default) for name in output_names]
    specs, seen = [], set()
    for output in request.outputs:
        if output.name not in output_names:
            raise bad_request(
                f"unknown output {output.name!r}; outputs are {', '.join(output_names)}", "unknown_output"
            )
        if output.name in seen:
            raise bad_request(f"output {output.name!r} is requested twice", "unknown_output")
        seen.add(output.name)
        classification = output.parameters.get("classification", 0)
        if (
            not isinstance(classification, int)
            or isinstance(classification, bool)
            or not 0 <= classification <= num_classes
        ):
            raise bad_request(
                f"output {output.name!r}: classification must be an integer from 1 to {num_classes} "
                f"(the number of classes), got {classification!r}",
                "invalid_parameter",
            )
        binary = output.parameters.get("binary_data", binary_default)
        specs.append(OutputSpec(name=output.name, classification=classification, binary=binary is True))
    return specs


def classification_strings(probabilities: np.ndarray, k: int, class_names: list[str]) -> np.ndarray:
    """Return ``[N, k]`` strings ``score:index:label``, best first; the score is the softmax probability."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    rows = [
        [f"{row[index]:f}:{index}:{class_names[index]}" for index in row_order]
        for row, row_order in zip(probabilities, order, strict=True)
    ]
    return np.asarray(rows, dtype=object)


def _serialize_bytes(values: np.ndarray) -> bytes:
    parts = []
    for value in values.ravel():
        data = value.encode("utf-8")
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def encode_response(
    header: dict[str, Any], outputs: list[tuple[OutputSpec, np.ndarray]]
) -> tuple[bytes, dict[str, str]]:
    """Build the response body and headers; binary outputs follow the JSON in output order."""
    tensors, blobs = [], []
    for spec, array in outputs:
        datatype = "BYTES" if array.dtype == object else "FP32"
        tensor: dict[str, Any] = {"name": spec.name, "datatype": datatype, "shape": list(array.shape)}
        if spec.binary:
            blob = _serialize_bytes(array) if datatype == "BYTES" else array.astype("<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = (
                [str(v) for v in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
            )
        tensors.append(tensor)
    body = json.dumps({**header, "outputs": tensors}).encode()
    if not blobs:
        return body, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(body))}
    return body + b"".join(blobs), headers
