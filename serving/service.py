"""BentoML service: images in, predictions out, over our JSON API and the Open Inference Protocol.

Run with ``MODEL_DIR=exports/digits bentoml serve serving.service:ImageClassifier``.

Two services run as separate processes. ``ImageClassifier`` takes the HTTP request, admits it or
rejects it with 429 (``serving.admission``), reads its images (``serving.intake``, or ``serving.oip`` under
``/v2``), decodes and resizes them in a decoding thread (``serving.pipeline``), and sends uint8
batches to ``OnnxModel`` (``serving.model_service``). That model service's ``infer`` method is
batchable, so BentoML's adaptive batching merges the arrays of concurrent requests into one model
call. Only that call is shared between requests.

Settings are environment variables, read once at import: ``serving.settings`` (batching, threads,
shutdown, admission, backend), ``serving.limits`` (request limits) and ``serving.providers``
(execution providers and session options). The README lists them all.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from fastapi import FastAPI
from PIL import Image
from pydantic import Field
from starlette.responses import JSONResponse

from serving.admission import AdmissionEvent, AdmissionMiddleware
from serving.errors import (
    ClientError,
    JSONErrorMiddleware,
    ModelOverloadedError,
    RejectionLog,
    RequestTimedOutError,
    error_response,
    is_oip_path,
    oip_error_response,
    route_error_response,
)
from serving.intake import ImagePart, read_image_parts
from serving.lifecycle import Lifecycle, TransientCheckError
from serving.limits import RequestLimits
from serving.model_service import EXECUTION, SETTINGS, OnnxModel
from serving.oip import attach, oip_app
from serving.pipeline import RequestClock, RequestRunner
from serving.schemas import ModelInfo, PredictResponse

logger = logging.getLogger("serving.service")
# MAX_IMAGE_PIXELS rejects large images with a 413, so Pillow's warning above 89 M pixels is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# BentoML's server logging config sets the root logger to WARNING; this package logs at INFO.
logging.getLogger("serving").setLevel(logging.INFO)

LIMITS = RequestLimits.from_env()
MODEL_CALL_ATTEMPTS = 3
# BentoML's own request timeout (its TimeoutMiddleware) is set this much longer than
# REQUEST_TIMEOUT_S, so the admission middleware's 504 always comes first.
BENTOML_TIMEOUT_MARGIN_S = 5.0

API_LIFECYCLE = Lifecycle("image_classifier")
# The ImageClassifier instance of this process, for the admission middleware's events.
_ACTIVE: dict[str, ImageClassifier] = {}


@dataclass
class ImageRequest:
    """Result of reading a request in ``PredictInput``: its images, or the reason it was rejected."""

    parts: list[ImagePart] = field(default_factory=list)
    error: ClientError | None = None
    state: Any = None


class PredictInput(bentoml.IODescriptor):
    """Images to classify: multipart files in the field ``images``, or see the API's description."""

    images: list[Path] = Field(description="one or more image files; the format comes from the bytes")

    @classmethod
    async def from_http_request(cls, request, serde) -> PredictInput:
        # Replaces BentoML's parser, which would fetch a text value of a file field as a URL and
        # reads the whole body before any limit applies.
        try:
            parts = await read_image_parts(request, LIMITS)
        except ClientError as exc:
            return cls.model_construct(images=ImageRequest(error=exc))
        return cls.model_construct(images=ImageRequest(parts=parts, state=request.state))


model_info_app = FastAPI(title="model information")


@bentoml.service(
    name="image_classifier",
    threads=SETTINGS.api_threads,
    traffic={"timeout": SETTINGS.request_timeout_s + BENTOML_TIMEOUT_MARGIN_S},
)
@bentoml.asgi_app(model_info_app)
@bentoml.asgi_app(oip_app)
class ImageClassifier:
    """HTTP front: admission, reading and decoding requests, batching them to the model, results."""

    model = bentoml.depends(OnnxModel)
    backend = SETTINGS.backend
    limits = LIMITS

    def __init__(self) -> None:
        from serving.engine import Postprocessor
        from serving.manifest import load_manifest, resolve_model_dir
        from serving.observability import api_metrics, library_versions

        self.model_dir = resolve_model_dir(SETTINGS.model_dir)
        self.manifest = load_manifest(self.model_dir)
        self.postprocessor = Postprocessor(self.manifest)
        self.rejections = RejectionLog(logger, SETTINGS.rejection_log_interval_s)
        self.failures = RejectionLog(logger, SETTINGS.rejection_log_interval_s, level=logging.WARNING)
        self.metrics = api_metrics(self.manifest.name, self.manifest.version)
        self.runner = RequestRunner(
            self.postprocessor,
            LIMITS,
            SETTINGS.max_batch_size,
            self._infer,
            self.metrics,
            SETTINGS.api_threads,
        )
        self._execution: dict = {}
        keep_model_sessions_open(self.model)
        API_LIFECYCLE.install_sigterm_drain(_shutdown_delay)
        attach(self)
        _ACTIVE["service"] = self
        logger.info(
            "serving %s version %s (%d classes) from %s with the %s backend; libraries %s; limits %s; "
            "admission max_concurrent_requests=%d max_queued_requests=%d request_timeout_s=%g; "
            "batching max_batch_size=%d max_latency_ms=%d api_threads=%d",
            self.manifest.name,
            self.manifest.version,
            self.manifest.num_classes,
            self.model_dir,
            SETTINGS.backend,
            library_versions(),
            LIMITS.model_dump(),
            SETTINGS.max_concurrent_requests,
            SETTINGS.max_queued_requests,
            SETTINGS.request_timeout_s,
            SETTINGS.max_batch_size,
            SETTINGS.max_latency_ms,
            SETTINGS.api_threads,
        )

    async def __is_ready__(self) -> bool:
        return await self.check_ready()

    async def check_ready(self) -> bool:
        return await API_LIFECYCLE.check_once(self._run_startup_checks)

    def not_ready_reason(self) -> str:
        return API_LIFECYCLE.reason

    def failed_reason(self) -> str | None:
        return API_LIFECYCLE.reason if API_LIFECYCLE.state == "failed" else None

    @bentoml.api(route="/predict", input_spec=PredictInput)
    async def predict(self, images: ImageRequest) -> PredictResponse:
        """Classify one or more images.

        Send them as multipart files in the field ``images``, as a raw body holding one image file,
        or as JSON ``{"images": [{"data": "<base64>", "name": "a.png"}]}``. The image format comes
        from the bytes. Errors are ``{"error": {"code", "message", "item"}}``: 400 for an empty,
        truncated or non-image part, 413 over a request limit, 415 for an unsupported image format,
        429 when the service is at capacity, 504 past the request timeout.
        """
        if images.error is not None:
            return self.reject(images.error, "/predict")
        if (reason := self.failed_reason()) is not None:
            return error_response(503, "not_ready", f"the service failed its startup checks: {reason}")
        from serving.pipeline import build_response

        def work(clock: RequestClock) -> list:
            arrays = self.runner.decode(images.parts, clock)
            return self.postprocessor.top_k(self.runner.logits_for_arrays(arrays, clock), k=5)

        try:
            top = await self.runner.submit(work, images.state)
        except ClientError as exc:
            return self.reject(exc, "/predict")
        except (ModelOverloadedError, RequestTimedOutError) as exc:
            return self.failure_response(exc, "/predict")
        return build_response(self.manifest, [part.name for part in images.parts], top)

    def reject(self, error: ClientError, path: str) -> JSONResponse:
        """Log and count a rejected input, and return its error in the route's error shape."""
        self.rejections.record(error)
        self.metrics.count_rejected_input(error.code)
        if is_oip_path(path):
            return oip_error_response(error.status, error.message)
        return error.to_response()

    def failure_response(self, exc: Exception, path: str) -> JSONResponse:
        """Return 429 with Retry-After for a model overload, and 504 for a passed deadline."""
        if isinstance(exc, ModelOverloadedError):
            error = ClientError(
                429,
                "overloaded",
                f"the model is overloaded: {exc}; retry after {SETTINGS.retry_after_s} s",
            )
            headers = {"Retry-After": str(SETTINGS.retry_after_s)}
        else:
            error = ClientError(
                504,
                "timeout",
                f"the request was not answered within "
                f"REQUEST_TIMEOUT_S={SETTINGS.request_timeout_s:g} s: {exc}",
            )
            headers = {}
        self.failures.record(error)
        return route_error_response(path, error.status, error.code, error.message, headers)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Call the model service, retrying on a dropped connection.

        The client reuses keep-alive connections to the model service's socket. A connection that
        the server has just closed for being idle fails before anything was sent, and inference has
        no side effects, so sending the batch again is safe. BentoML's 503, sent when the model
        process predicts that a batch would miss ``MAX_LATENCY_MS``, becomes ModelOverloadedError.
        """
        import aiohttp
        from bentoml.exceptions import ServiceUnavailable

        attempt = 1
        while True:
            try:
                return self.model.infer(batch)
            except ServiceUnavailable as exc:
                logger.debug("model call declined: %s", exc)
                raise ModelOverloadedError(
                    f"the model process predicted that the batch would miss MAX_LATENCY_MS="
                    f"{SETTINGS.max_latency_ms} ms"
                ) from None
            except aiohttp.ClientConnectionError as exc:
                if attempt >= MODEL_CALL_ATTEMPTS:
                    raise
                logger.warning(
                    "model call attempt %d failed (%s: %s); retrying", attempt, type(exc).__name__, exc
                )
                attempt += 1

    async def _run_startup_checks(self) -> str:
        """Send a synthetic image and the export's golden images through the request path."""
        import aiohttp
        import anyio.to_thread

        try:
            model_ready = await self.model.is_ready(5)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientCheckError(f"the model process does not respond yet: {exc}") from exc
        if not model_ready:
            raise TransientCheckError("the model process is not ready yet")
        self._execution = await self.model.to_async.execution()
        self.metrics.set_provider(self._execution["providers"][0])
        # The sync model client needs an anyio worker thread, as the API methods have.
        return await anyio.to_thread.run_sync(self._check_request_path)

    def _check_request_path(self) -> str:
        import aiohttp
        from bentoml.exceptions import BentoMLException

        from serving.pipeline import decode_parts
        from serving.verify import check_golden

        warm_up = ImagePart(
            "warm-up", _gray_png(self.postprocessor.spec.width, self.postprocessor.spec.height)
        )
        try:
            self.runner.logits_for_arrays(decode_parts([warm_up], self.postprocessor, LIMITS), RequestClock())
            if not self.manifest.golden:
                logger.warning(
                    "the export has no golden images; readiness checks only that the model returns logits"
                )
                return "warm-up request answered; the export has no golden images"
            checked = check_golden(self.model_dir, self.manifest, self._infer)
        except (aiohttp.ClientError, BentoMLException, ModelOverloadedError) as exc:
            raise TransientCheckError(f"the model call failed: {type(exc).__name__}: {exc}") from exc
        return f"warm-up request answered and {checked} golden images match the export"

    @model_info_app.get("/model", response_model=ModelInfo)
    async def model_info(self) -> ModelInfo:
        """Name, version, classes, input contract, execution, batching, limits and admission."""
        if not self._execution:
            self._execution = await self.model.to_async.execution()
        contract = self.manifest.input
        return ModelInfo.model_validate(
            {
                "name": self.manifest.name,
                "version": self.manifest.version,
                "architecture": self.manifest.architecture,
                "classes": self.manifest.class_names,
                "input": {**contract.model_dump(exclude={"name"}), "shape": contract.shape},
                "execution_providers": self._execution.get("providers", []),
                "execution": self._execution or None,
                "batching": {
                    "max_batch_size": SETTINGS.max_batch_size,
                    "max_latency_ms": SETTINGS.max_latency_ms,
                    "api_threads": SETTINGS.api_threads,
                },
                "limits": LIMITS.model_dump(),
                "admission": {
                    "max_concurrent_requests": SETTINGS.max_concurrent_requests,
                    "max_queued_requests": SETTINGS.max_queued_requests,
                    "request_timeout_s": SETTINGS.request_timeout_s,
                    "retry_after_s": SETTINGS.retry_after_s,
                },
            }
        )

    @bentoml.on_shutdown
    def log_shutdown(self) -> None:
        logger.info(
            "API process shutting down (%s); rejections by code: %s",
            API_LIFECYCLE.state,
            self.rejections.counts,
        )


def _on_admission_event(event: AdmissionEvent) -> None:
    """Count and log what the admission middleware did with an inference request."""
    service = _ACTIVE.get("service")
    if service is None:
        return
    metrics = service.metrics
    metrics.observe_request(event.route, event.status, event.seconds)
    if event.status == 429:
        metrics.count_overloaded("admission" if event.reason == "rejected" else "model")
    elif event.status == 504:
        metrics.count_timeout()
    if event.reason == "rejected":
        service.failures.record(
            ClientError(429, "overloaded", f"{event.path}: admission limits full", event.path)
        )
    elif event.reason == "timed_out":
        service.failures.record(
            ClientError(504, "timeout", f"{event.path}: no response after {event.seconds:.1f} s", event.path)
        )


# Starlette runs the first middleware added outermost: admission answers 429 and 504 before the
# JSON error middleware, in the route's error shape.
ImageClassifier.add_asgi_middleware(
    AdmissionMiddleware,
    max_in_flight=SETTINGS.max_concurrent_requests,
    max_queued=SETTINGS.max_queued_requests,
    timeout_s=SETTINGS.request_timeout_s,
    retry_after_s=SETTINGS.retry_after_s,
    respond=route_error_response,
    on_event=_on_admission_event,
)
ImageClassifier.add_asgi_middleware(JSONErrorMiddleware, not_ready_reason=lambda: API_LIFECYCLE.reason)


async def _shutdown_delay() -> None:
    import asyncio

    await asyncio.sleep(SETTINGS.shutdown_delay_s)


def _gray_png(width: int, height: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def keep_model_sessions_open(proxy: object) -> None:
    """Stop BentoML's client from recycling its connection session every 100 requests.

    BentoML 1.4's dependency client closes its shared aiohttp session after 100 requests or 300 s
    and opens a new one, without waiting for the requests still in flight on the old one. Under
    concurrent load those requests fail with "Server disconnected". The session is kept for the
    life of the worker instead.
    """
    # NOTE: this sets private attributes of BentoML 1.4's client; when they are missing, only the
    # retry in ImageClassifier._infer remains.
    patched = 0
    for client_name in ("_sync", "_async"):
        manager = getattr(getattr(proxy, client_name, None), "_session_manager", None)
        if manager is not None and hasattr(manager, "max_requests"):
            manager.max_requests = sys.maxsize
            manager.max_age = float("inf")
            patched += 1
    if patched == 0:
        logger.warning("BentoML's client has no session settings to adjust; connection errors may occur")


__all__ = ["EXECUTION", "ImageClassifier", "OnnxModel"]
