"""BentoML service: image files in, top-5 predictions out, through onnxruntime.

Run with ``MODEL_DIR=exports/digits bentoml serve serving.service:ImageClassifier``.

Two services run as separate processes. ``ImageClassifier`` takes the HTTP request, decodes and
resizes each image (in parallel across requests), and sends one uint8 batch per request to
``OnnxModel``. ``OnnxModel`` holds the onnxruntime session; its ``infer`` method is batchable, so
BentoML's adaptive batching merges the arrays of concurrent requests into one ``session.run`` call.

Settings come from environment variables, read once at import:
- ``MODEL_DIR``: export folder with ``manifest.json`` (default ``exports/digits``).
- ``MAX_BATCH_SIZE``: most images in one onnxruntime call (default 32).
- ``MAX_LATENCY_MS``: latency budget of one model call in ms, queueing included (default 1000).
  BentoML answers 503 to a request it predicts cannot finish within it.
- ``API_THREADS``: requests decoded at once by each API worker (default 4).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import bentoml
import numpy as np
from starlette.responses import JSONResponse

from serving.schemas import ClassScore, ErrorDetail, ErrorResponse, Prediction, PredictResponse

logger = logging.getLogger("serving.service")
# BentoML's server logging config sets the root logger to WARNING; this package logs at INFO.
logging.getLogger("serving").setLevel(logging.INFO)

# BentoML 1.4 stores each uploaded file with tempfile.NamedTemporaryFile(suffix=<client file name>),
# whose names are "tmp" + 8 random characters + suffix.
_UPLOAD_PREFIX_LENGTH = len("tmp") + 8


def _positive_int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


MODEL_DIR = os.environ.get("MODEL_DIR", "exports/digits")
# BentoML requires a batchable API's max_batch_size to be at least 2.
MAX_BATCH_SIZE = max(2, _positive_int_env("MAX_BATCH_SIZE", 32))
MAX_LATENCY_MS = _positive_int_env("MAX_LATENCY_MS", 1000)
API_THREADS = _positive_int_env("API_THREADS", 4)
MODEL_CALL_ATTEMPTS = 3


@bentoml.service(name="onnx_model", workers=1, threads=1)
class OnnxModel:
    """The onnxruntime session, called with batches merged across requests."""

    def __init__(self) -> None:
        from serving.engine import OnnxSession

        self.session = OnnxSession(MODEL_DIR)
        logger.info(
            "execution providers in use: %s; max_batch_size=%d max_latency_ms=%d",
            ",".join(self.session.providers),
            MAX_BATCH_SIZE,
            MAX_LATENCY_MS,
        )

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, images: np.ndarray) -> np.ndarray:
        return self.session.infer(images)


@bentoml.service(name="image_classifier", threads=API_THREADS)
class ImageClassifier:
    """HTTP front: decoding, batching requests to the model, and top-5 results."""

    model = bentoml.depends(OnnxModel)

    def __init__(self) -> None:
        from serving.engine import Postprocessor
        from serving.manifest import load_manifest

        self.manifest = load_manifest(MODEL_DIR)
        self.postprocessor = Postprocessor(self.manifest)
        keep_model_sessions_open(self.model)
        logger.info(
            "serving %s version %s (%d classes) from %s",
            self.manifest.name,
            self.manifest.version,
            self.manifest.num_classes,
            MODEL_DIR,
        )

    @bentoml.api(route="/predict")
    def predict(self, images: list[Path]) -> PredictResponse:
        """Classify one or more uploaded image files (multipart field ``images``)."""
        from serving.preprocess import ImageDecodeError, load_array

        if not images:
            return _error_response(400, "no_images", "the request has no files in field 'images'", None)

        arrays = []
        file_names = []
        for path in images:
            file_name = client_file_name(path)
            try:
                arrays.append(load_array(path, self.postprocessor.spec))
            except ImageDecodeError as exc:
                logger.info("rejected upload %r: %s", file_name, exc)
                return _error_response(400, "invalid_image", f"{file_name}: {exc}", file_name)
            file_names.append(file_name)

        logits = []
        # Requests larger than one batch are sent in chunks so no single call exceeds MAX_BATCH_SIZE.
        for start in range(0, len(arrays), MAX_BATCH_SIZE):
            chunk = self.postprocessor.to_batch(arrays[start : start + MAX_BATCH_SIZE])
            logits.append(self._infer(chunk))
        top = self.postprocessor.top_k(np.concatenate(logits), k=5)

        predictions = [
            Prediction(
                file=file_name,
                label=row[0].label,
                class_id=row[0].class_id,
                score=row[0].score,
                top5=[ClassScore(label=entry.label, score=entry.score) for entry in row],
            )
            for file_name, row in zip(file_names, top, strict=True)
        ]
        return PredictResponse(
            model=self.manifest.name, version=self.manifest.version, predictions=predictions
        )

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Call the model service, retrying on a dropped connection.

        The client reuses keep-alive connections to the model service's socket; one the server has
        just closed for being idle fails with a connection error before anything was sent. Inference
        has no side effects, so sending the batch again is safe.
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


def client_file_name(path: Path) -> str:
    """Recover the file name the client sent from BentoML's temporary upload path."""
    # NOTE: this depends on BentoML's upload naming; the integration test checks it still holds.
    name = path.name
    if name.startswith("tmp") and len(name) > _UPLOAD_PREFIX_LENGTH:
        return name[_UPLOAD_PREFIX_LENGTH:]
    return name


def _error_response(status: int, code: str, message: str, item: str | None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, item=item))
    return JSONResponse(body.model_dump(), status_code=status)
