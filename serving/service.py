"""BentoML service: images in, top-5 predictions out, through onnxruntime.

Run with ``MODEL_DIR=exports/digits bentoml serve serving.service:ImageClassifier``.

Two services run as separate processes. ``ImageClassifier`` takes the HTTP request, reads its images
(``serving.intake``), decodes and resizes them in the request's own thread (``serving.pipeline``),
and sends one uint8 batch per request to ``OnnxModel``. ``OnnxModel`` owns the onnxruntime session;
its ``infer`` method is batchable, so BentoML's adaptive batching merges the arrays of concurrent
requests into one ``session.run`` call. Only that call is shared between requests.

Settings come from environment variables, read once at import:
- ``MODEL_DIR``: export folder with ``manifest.json`` (default ``exports/digits``).
- ``MAX_BATCH_SIZE``: most images in one onnxruntime call (default 32).
- ``MAX_LATENCY_MS``: latency budget of one model call in ms, queueing included (default 1000).
  BentoML answers 503 to a request it predicts cannot finish within it.
- ``API_THREADS``: requests decoded at once by each API worker (default 4).
- ``MAX_REQUEST_BYTES``, ``MAX_IMAGES_PER_REQUEST``, ``MAX_IMAGE_PIXELS``: see ``serving.limits``.
- ``SHUTDOWN_DELAY_S``: seconds the API keeps serving after SIGTERM with ``/readyz`` at 503, so a
  load balancer stops sending traffic before connections are refused (default 2).
- ``DRAIN_TIMEOUT_S``: most seconds the model process waits after SIGTERM for the API process to
  finish its requests (default 120).
- ``REJECTION_LOG_INTERVAL_S``: seconds between two log lines about rejected requests with the same
  error code; the rejections in between are counted in the next line (default 10).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import bentoml
import numpy as np
from fastapi import FastAPI
from PIL import Image
from pydantic import Field
from starlette.responses import JSONResponse

from serving.errors import ClientError, JSONErrorMiddleware, RejectionLog, error_response
from serving.intake import ImagePart, read_image_parts
from serving.lifecycle import Lifecycle, TransientCheckError, wait_for_siblings
from serving.limits import RequestLimits
from serving.schemas import ModelInfo, PredictResponse

logger = logging.getLogger("serving.service")
# MAX_IMAGE_PIXELS rejects large images with a 413, so Pillow's warning above 89 M pixels is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# BentoML's server logging config sets the root logger to WARNING; this package logs at INFO.
logging.getLogger("serving").setLevel(logging.INFO)


def _number_env(name: str, default: float, parse: type, minimum: float, allowed: str) -> float:
    raw = os.environ.get(name, str(default))
    try:
        value = parse(raw)
    except ValueError:
        raise ValueError(f"{name} must be {allowed}, got {raw!r}") from None
    if not value >= minimum:
        raise ValueError(f"{name} must be {allowed}, got {raw!r}")
    return value


def _positive_int_env(name: str, default: int) -> int:
    return _number_env(name, default, int, 1, "a positive integer")


def _seconds_env(name: str, default: float) -> float:
    return _number_env(name, default, float, 0.0, "a number of seconds >= 0")


MODEL_DIR = os.environ.get("MODEL_DIR", "exports/digits")
# BentoML requires a batchable API's max_batch_size to be at least 2.
MAX_BATCH_SIZE = max(2, _positive_int_env("MAX_BATCH_SIZE", 32))
MAX_LATENCY_MS = _positive_int_env("MAX_LATENCY_MS", 1000)
API_THREADS = _positive_int_env("API_THREADS", 4)
SHUTDOWN_DELAY_S = _seconds_env("SHUTDOWN_DELAY_S", 2.0)
DRAIN_TIMEOUT_S = _seconds_env("DRAIN_TIMEOUT_S", 120.0)
REJECTION_LOG_INTERVAL_S = _seconds_env("REJECTION_LOG_INTERVAL_S", 10.0)
LIMITS = RequestLimits.from_env()
MODEL_CALL_ATTEMPTS = 3

# One per process: BentoML runs each service in its own worker processes.
MODEL_LIFECYCLE = Lifecycle("onnx_model")
API_LIFECYCLE = Lifecycle("image_classifier")


@bentoml.service(name="onnx_model", workers=1, threads=1)
class OnnxModel:
    """The onnxruntime session, called with batches merged across requests."""

    def __init__(self) -> None:
        from serving.engine import OnnxSession

        self.session: OnnxSession | None = None
        MODEL_LIFECYCLE.install_sigterm_drain(lambda: wait_for_siblings("onnx_model", DRAIN_TIMEOUT_S))
        try:
            # Verifies every file's sha256 against the manifest before the graph is loaded.
            session = OnnxSession(MODEL_DIR)
            self._warm_up(session)
        except (OSError, ValueError, RuntimeError) as exc:
            # onnxruntime raises RuntimeError subclasses for a graph it cannot load.
            # The process stays up and not ready, so /readyz reports why instead of a restart loop.
            MODEL_LIFECYCLE.mark_failed(f"cannot load the model from {MODEL_DIR}: {exc}")
            return
        self.session = session
        MODEL_LIFECYCLE.mark_ready(
            f"loaded {MODEL_DIR} on {','.join(session.providers)}; max_batch_size={MAX_BATCH_SIZE} "
            f"max_latency_ms={MAX_LATENCY_MS}"
        )

    @staticmethod
    def _warm_up(session) -> None:
        """Run a batch of one and a full batch, so the first requests pay no allocation cost."""
        from serving.engine import to_input_batch

        contract = session.manifest.input
        for batch_size in (1, MAX_BATCH_SIZE):
            shape = (batch_size, contract.height, contract.width, contract.image_spec.channels)
            session.infer(to_input_batch(np.zeros(shape, np.uint8), contract))

    def __is_ready__(self) -> bool:
        return MODEL_LIFECYCLE.is_ready

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, images: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise RuntimeError(f"the model is not loaded: {MODEL_LIFECYCLE.reason}")
        return self.session.infer(images)

    @bentoml.api
    def providers(self) -> list[str]:
        """Return the onnxruntime execution providers in use, in priority order."""
        return list(self.session.providers) if self.session is not None else []


@dataclass
class ImageRequest:
    """Result of reading a request in ``PredictInput``: its images, or the reason it was rejected."""

    parts: list[ImagePart] = field(default_factory=list)
    error: ClientError | None = None


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
        return cls.model_construct(images=ImageRequest(parts=parts))


model_info_app = FastAPI(title="model information")


@bentoml.service(name="image_classifier", threads=API_THREADS)
@bentoml.asgi_app(model_info_app)
class ImageClassifier:
    """HTTP front: reading and decoding requests, batching them to the model, and top-5 results."""

    model = bentoml.depends(OnnxModel)

    def __init__(self) -> None:
        from serving.engine import Postprocessor
        from serving.manifest import load_manifest, resolve_model_dir

        self.model_dir = resolve_model_dir(MODEL_DIR)
        self.manifest = load_manifest(self.model_dir)
        self.postprocessor = Postprocessor(self.manifest)
        self.rejections = RejectionLog(logger, REJECTION_LOG_INTERVAL_S)
        self._providers: list[str] = []
        keep_model_sessions_open(self.model)
        API_LIFECYCLE.install_sigterm_drain(_shutdown_delay)
        logger.info(
            "serving %s version %s (%d classes) from %s; limits %s",
            self.manifest.name,
            self.manifest.version,
            self.manifest.num_classes,
            self.model_dir,
            LIMITS.model_dump(),
        )

    async def __is_ready__(self) -> bool:
        return await API_LIFECYCLE.check_once(self._run_startup_checks)

    @bentoml.api(route="/predict", input_spec=PredictInput)
    def predict(self, images: ImageRequest) -> PredictResponse:
        """Classify one or more images.

        Send them as multipart files in the field ``images``, as a raw body holding one image file,
        or as JSON ``{"images": [{"data": "<base64>", "name": "a.png"}]}``. The image format comes
        from the bytes. Errors are ``{"error": {"code", "message", "item"}}``: 400 for an empty,
        truncated or non-image part, 413 over a request limit, 415 for an unsupported image format.
        """
        if images.error is not None:
            return self._reject(images.error)
        if API_LIFECYCLE.state == "failed":
            return error_response(
                503, "not_ready", f"the service failed its startup checks: {API_LIFECYCLE.reason}"
            )
        from bentoml.exceptions import ServiceUnavailable

        from serving.pipeline import build_response, decode_parts

        try:
            arrays = decode_parts(images.parts, self.postprocessor, LIMITS)
        except ClientError as exc:
            return self._reject(exc)
        try:
            top = self._top_classes(arrays)
        except ServiceUnavailable as exc:
            logger.warning("model call rejected as overloaded: %s", exc)
            return error_response(503, "overloaded", "the model is overloaded; retry after a short delay")
        return build_response(self.manifest, [part.name for part in images.parts], top)

    def _top_classes(self, arrays: list[np.ndarray]) -> list:
        """Run the model on a request's images in chunks of at most MAX_BATCH_SIZE, in order."""
        logits = []
        for start in range(0, len(arrays), MAX_BATCH_SIZE):
            chunk = self.postprocessor.to_batch(arrays[start : start + MAX_BATCH_SIZE])
            logits.append(self._infer(chunk))
        return self.postprocessor.top_k(np.concatenate(logits), k=5)

    def _reject(self, error: ClientError) -> JSONResponse:
        self.rejections.record(error)
        return error.to_response()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Call the model service, retrying on a dropped connection.

        The client reuses keep-alive connections to the model service's socket. A connection that
        the server has just closed for being idle fails before anything was sent, and inference has
        no side effects, so sending the batch again is safe.
        """
        import aiohttp

        for attempt in range(1, MODEL_CALL_ATTEMPTS):
            try:
                return self.model.infer(batch)
            except aiohttp.ClientConnectionError as exc:
                logger.warning(
                    "model call attempt %d failed (%s: %s); retrying", attempt, type(exc).__name__, exc
                )
        return self.model.infer(batch)

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
            self._top_classes(decode_parts([warm_up], self.postprocessor, LIMITS))
            if not self.manifest.golden:
                logger.warning(
                    "the export has no golden images; readiness checks only that the model returns logits"
                )
                return "warm-up request answered; the export has no golden images"
            checked = check_golden(self.model_dir, self.manifest, self._infer)
        except (aiohttp.ClientError, BentoMLException) as exc:
            raise TransientCheckError(f"the model call failed: {type(exc).__name__}: {exc}") from exc
        return f"warm-up request answered and {checked} golden images match the export"

    @model_info_app.get("/model", response_model=ModelInfo)
    async def model_info(self) -> ModelInfo:
        """Name, version, classes, input contract, execution providers, batching and limits."""
        if not self._providers:
            self._providers = await self.model.to_async.providers()
        contract = self.manifest.input
        return ModelInfo.model_validate(
            {
                "name": self.manifest.name,
                "version": self.manifest.version,
                "architecture": self.manifest.architecture,
                "classes": self.manifest.class_names,
                "input": {**contract.model_dump(exclude={"name"}), "shape": contract.shape},
                "execution_providers": self._providers,
                "batching": {
                    "max_batch_size": MAX_BATCH_SIZE,
                    "max_latency_ms": MAX_LATENCY_MS,
                    "api_threads": API_THREADS,
                },
                "limits": LIMITS.model_dump(),
            }
        )


ImageClassifier.add_asgi_middleware(JSONErrorMiddleware, not_ready_reason=lambda: API_LIFECYCLE.reason)


async def _shutdown_delay() -> None:
    import asyncio

    await asyncio.sleep(SHUTDOWN_DELAY_S)


def _gray_png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

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
