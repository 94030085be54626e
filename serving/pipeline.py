"""The per-request steps around the model call: decode a request's images, call the model in chunks,
and build the response.

Decoding runs in the request's own thread, so one bad image fails only its own request and never a
batch that the model process merged from several requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from serving.admission import ADMISSION_WAIT_KEY, DEADLINE_KEY
from serving.engine import Postprocessor, TopClass
from serving.errors import ClientError, RequestTimedOutError
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


@dataclass(frozen=True)
class RequestClock:
    """A request's deadline (``time.monotonic`` seconds, or None) and its wait for admission."""

    deadline: float | None = None
    admission_wait_s: float = 0.0

    @classmethod
    def from_state(cls, state: Any) -> RequestClock:
        """Read what ``serving.admission`` stored in the request's state; no deadline when absent."""
        values = getattr(state, "_state", state) or {}
        return cls(values.get(DEADLINE_KEY), values.get(ADMISSION_WAIT_KEY, 0.0))

    def check(self, step: str) -> None:
        """Raise RequestTimedOutError when the deadline has passed, naming the step not yet done."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RequestTimedOutError(f"the deadline passed before {step}")


class RequestRunner:
    """Runs a request's work in a decoding thread: decode, model calls in chunks, with timings.

    ``call_model`` sends one batch of at most ``max_batch_size`` images to the model and returns
    its logits. ``metrics`` is a ``serving.observability.ApiMetrics``. At most ``threads`` works run
    at once in each API process, whichever route they came from.
    """

    def __init__(
        self,
        postprocessor: Postprocessor,
        limits: RequestLimits,
        max_batch_size: int,
        call_model: Callable[[np.ndarray], np.ndarray],
        metrics,
        threads: int,
    ):
        self.postprocessor = postprocessor
        self.limits = limits
        self.max_batch_size = max_batch_size
        self.call_model = call_model
        self.metrics = metrics
        self.threads = threads
        self._limiter = None

    async def submit(self, work: Callable[[RequestClock], Any], state: Any) -> Any:
        """Run ``work(clock)`` in a decoding thread and return its result; record the queue wait."""
        import anyio
        import anyio.to_thread

        if self._limiter is None:
            # Created here because an anyio limiter needs the running event loop.
            self._limiter = anyio.CapacityLimiter(self.threads)
        clock = RequestClock.from_state(state)
        submitted = time.monotonic()

        def run() -> Any:
            self.metrics.observe_queue_wait(clock.admission_wait_s + time.monotonic() - submitted)
            clock.check("a decoding thread was free")
            return work(clock)

        return await anyio.to_thread.run_sync(run, limiter=self._limiter)

    def decode(self, parts: list[ImagePart], clock: RequestClock) -> list[np.ndarray]:
        started = time.monotonic()
        arrays = decode_parts(parts, self.postprocessor, self.limits)
        self.metrics.observe_decode(time.monotonic() - started)
        return arrays

    def logits_for_arrays(self, arrays: list[np.ndarray], clock: RequestClock) -> np.ndarray:
        """Return the logits of decoded images, in order, from model calls of at most max_batch_size."""
        chunks = [
            self.postprocessor.to_batch(arrays[start : start + self.max_batch_size])
            for start in range(0, len(arrays), self.max_batch_size)
        ]
        return self._run_chunks(chunks, clock)

    def logits_for_batch(self, batch: np.ndarray, clock: RequestClock) -> np.ndarray:
        """Return the logits of a tensor already in the contract's layout, in chunks."""
        chunks = [
            batch[start : start + self.max_batch_size] for start in range(0, len(batch), self.max_batch_size)
        ]
        return self._run_chunks(chunks, clock)

    def _run_chunks(self, chunks: list[np.ndarray], clock: RequestClock) -> np.ndarray:
        started = time.monotonic()
        logits = []
        for chunk in chunks:
            clock.check("the model call")
            logits.append(self.call_model(chunk))
        self.metrics.observe_inference(time.monotonic() - started)
        return np.concatenate(logits)
