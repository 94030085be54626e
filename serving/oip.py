"""Open Inference Protocol (KServe v2, as Triton serves it) routes over the same model and pipeline.

Routes: ``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}[/versions/{version}]`` (model metadata), ``.../ready`` and ``POST .../infer``.
Bodies are described in ``serving.oip_codec``. Outputs: ``logits`` and ``probabilities`` (FP32
``[N, num_classes]``); an output requested with the parameter ``classification: k`` becomes BYTES
``[N, k]`` strings ``score:index:label``, where the score is the softmax probability.

Errors have the protocol's body ``{"error": "<message>"}``: 400 for a bad request (413 over a request
limit, 415 for an unsupported image format), 404 for an unknown model or version, 429 with
``Retry-After`` when overloaded, 504 past ``REQUEST_TIMEOUT_S``. Readiness returns 200 when ready and,
as the protocol asks, a 4xx (400) otherwise.

The routes call a ``backend`` attached by the service at startup (``attach``): an object with the
attributes and methods used below (``serving.service.ImageClassifier``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import numpy as np
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from serving.engine import softmax
from serving.errors import ClientError, ModelOverloadedError, RequestTimedOutError, oip_error_response
from serving.intake import check_declared_length, read_body
from serving.oip_codec import (
    BYTES_INPUT,
    CONTRACT_DATATYPE,
    HEADER_LENGTH,
    classification_strings,
    contract_shape,
    encode_response,
    parse_request,
    read_image_bytes,
    read_tensor,
    requested_outputs,
)
from serving.pipeline import RequestClock

SERVER_NAME = "image-classifier"
OUTPUT_NAMES = ("logits", "probabilities")
EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}

oip_app = FastAPI(title="Open Inference Protocol", docs_url=None, redoc_url=None, openapi_url=None)


def attach(backend) -> None:
    """Route every request of ``oip_app`` to ``backend`` (called once per API process)."""
    oip_app.state.backend = backend


def _backend(request: Request):
    return request.app.state.backend


def _server_version() -> str:
    try:
        return version("maskserve")
    except PackageNotFoundError:
        return "unknown"


def _model_error(backend, name: str, model_version: str | None) -> JSONResponse | None:
    manifest = backend.manifest
    if name != manifest.name:
        return oip_error_response(404, f"model {name!r} not found; this server serves {manifest.name!r}")
    if model_version not in (None, "", manifest.version):
        return oip_error_response(
            404,
            f"model {name!r} has no version {model_version!r}; the version served is {manifest.version!r}",
        )
    return None


@oip_app.get("/v2")
async def server_metadata() -> JSONResponse:
    return JSONResponse({"name": SERVER_NAME, "version": _server_version(), "extensions": EXTENSIONS})


@oip_app.get("/v2/health/live")
async def server_live() -> JSONResponse:
    return JSONResponse({"live": True})


@oip_app.get("/v2/health/ready")
async def server_ready(request: Request) -> JSONResponse:
    backend = _backend(request)
    if await backend.check_ready():
        return JSONResponse({"ready": True})
    return oip_error_response(400, f"not ready: {backend.not_ready_reason()}")


@oip_app.get("/v2/models/{name}")
@oip_app.get("/v2/models/{name}/versions/{model_version}")
async def model_metadata(request: Request, name: str, model_version: str | None = None) -> JSONResponse:
    backend = _backend(request)
    if (error := _model_error(backend, name, model_version)) is not None:
        return error
    manifest = backend.manifest
    contract = manifest.input
    outputs = [
        {"name": output, "datatype": "FP32", "shape": [-1, manifest.num_classes]} for output in OUTPUT_NAMES
    ]
    return JSONResponse(
        {
            "name": manifest.name,
            "versions": [manifest.version],
            "platform": PLATFORMS[backend.backend],
            "inputs": [
                {
                    "name": contract.name,
                    "datatype": CONTRACT_DATATYPE[contract.format],
                    "shape": [-1, *contract_shape(contract)],
                },
                {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": outputs,
        }
    )


@oip_app.get("/v2/models/{name}/ready")
@oip_app.get("/v2/models/{name}/versions/{model_version}/ready")
async def model_ready(request: Request, name: str, model_version: str | None = None) -> JSONResponse:
    backend = _backend(request)
    if (error := _model_error(backend, name, model_version)) is not None:
        return error
    if await backend.check_ready():
        return JSONResponse({"name": name, "ready": True})
    return oip_error_response(400, f"model {name!r} is not ready: {backend.not_ready_reason()}")


@oip_app.post("/v2/models/{name}/infer")
@oip_app.post("/v2/models/{name}/versions/{model_version}/infer")
async def infer(request: Request, name: str, model_version: str | None = None) -> Response:
    backend = _backend(request)
    if (error := _model_error(backend, name, model_version)) is not None:
        return error
    if backend.failed_reason() is not None:
        return oip_error_response(503, f"the service failed its startup checks: {backend.failed_reason()}")
    limits = backend.limits
    try:
        check_declared_length(request.headers, limits)
        body = await read_body(request.stream(), limits)
        header_length = request.headers.get(HEADER_LENGTH)
        content, headers = await backend.runner.submit(
            lambda clock: _run_inference(backend, body, header_length, clock), request.state
        )
    except ClientError as exc:
        return backend.reject(exc, request.url.path)
    except (ModelOverloadedError, RequestTimedOutError) as exc:
        return backend.failure_response(exc, request.url.path)
    return Response(content, headers=headers)


def _run_inference(
    backend, body: bytes, header_length: str | None, clock: RequestClock
) -> tuple[bytes, dict]:
    """Parse, check, run and encode one inference request; runs in a decoding thread."""
    manifest, limits, runner = backend.manifest, backend.limits, backend.runner
    request, raw = parse_request(body, header_length)

    if len(request.inputs) != 1:
        raise ClientError(
            400,
            "invalid_request",
            f"the request has {len(request.inputs)} inputs; send exactly one: {manifest.input.name!r} "
            f"(a tensor) or {BYTES_INPUT!r} (encoded images)",
        )
    outputs = requested_outputs(request, OUTPUT_NAMES, manifest.num_classes)

    tensor = request.inputs[0]
    if tensor.name == BYTES_INPUT:
        parts = read_image_bytes(tensor, raw[0], limits)
        logits = runner.logits_for_arrays(runner.decode(parts, clock), clock)
    elif tensor.name == manifest.input.name:
        logits = runner.logits_for_batch(read_tensor(tensor, raw[0], manifest.input, limits), clock)
    else:
        raise ClientError(
            400,
            "unknown_input",
            f"unknown input {tensor.name!r}; inputs are {manifest.input.name!r} and {BYTES_INPUT!r}",
        )

    probabilities = softmax(logits)
    arrays = {"logits": logits, "probabilities": probabilities}
    encoded = []
    for spec in outputs:
        array = arrays[spec.name]
        if spec.classification:
            array = classification_strings(probabilities, spec.classification, manifest.class_names)
        encoded.append((spec, np.asarray(array)))
    header = {"model_name": manifest.name, "model_version": manifest.version}
    if request.id is not None:
        header["id"] = request.id
    return encode_response(header, encoded)
