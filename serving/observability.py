"""Prometheus metrics of the service, and the library versions logged at startup.

The metrics are prometheus_client objects in the default registry. ``bentoml serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` in every worker's environment, so each process writes its samples to
that folder and BentoML's ``/metrics`` on the API port merges them with its own metrics
(BentoML 1.4, ``bentoml/_internal/server/metrics/prometheus.py``). prometheus_client picks its
storage when first imported, so it is imported inside the factories below, which the services call
from ``__init__``, never at module import.

Every metric has the labels ``model``, ``version`` and ``provider`` (the execution provider in use,
for example ``CPUExecutionProvider``; ``unknown`` in the API process until its readiness check has
asked the model process).
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import threading

LABELS = ("model", "version", "provider")
UNKNOWN_PROVIDER = "unknown"
# Seconds, from 1 ms (a cached decode of a tiny image) to 60 s (beyond any request timeout).
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
VERSIONED_PACKAGES = ("bentoml", "onnxruntime-gpu", "onnxruntime", "numpy", "pillow", "pydantic", "torch")


def library_versions() -> dict[str, str]:
    """Return Python's version and the installed version of each serving library that is present."""
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


class ApiMetrics:
    """Per-request metrics of the API process."""

    def __init__(self, model: str, version: str):
        import prometheus_client as prom

        self.model = model
        self.version = version
        self.provider = UNKNOWN_PROVIDER
        self._lock = threading.Lock()
        histogram = functools.partial(prom.Histogram, labelnames=LABELS, buckets=SECONDS_BUCKETS)
        self.decode = histogram(
            "image_classifier_decode_seconds", "Time to decode and resize the images of one request"
        )
        self.queue_wait = histogram(
            "image_classifier_queue_wait_seconds",
            "Time a request waited for an admission slot and a decoding thread before its work began",
        )
        self.inference = histogram(
            "image_classifier_inference_seconds",
            "Time of the model calls of one request, adaptive batching wait included",
        )
        self.total = prom.Histogram(
            "image_classifier_request_seconds",
            "Time from a request's arrival to its response, by route and status",
            labelnames=(*LABELS, "route", "status"),
            buckets=SECONDS_BUCKETS,
        )
        self.rejected_inputs = prom.Counter(
            "image_classifier_rejected_inputs",
            "Requests rejected for their input, by error code",
            labelnames=(*LABELS, "reason"),
        )
        self.overloaded = prom.Counter(
            "image_classifier_overload_rejections",
            "Requests answered 429, by reason: admission (limits full) or model (batching latency budget)",
            labelnames=(*LABELS, "reason"),
        )
        self.timeouts = prom.Counter(
            "image_classifier_timeouts", "Requests answered 504 after REQUEST_TIMEOUT_S", labelnames=LABELS
        )

    def set_provider(self, provider: str) -> None:
        with self._lock:
            self.provider = provider

    def _labels(self) -> dict[str, str]:
        return {"model": self.model, "version": self.version, "provider": self.provider}

    def observe_decode(self, seconds: float) -> None:
        self.decode.labels(**self._labels()).observe(seconds)

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait.labels(**self._labels()).observe(seconds)

    def observe_inference(self, seconds: float) -> None:
        self.inference.labels(**self._labels()).observe(seconds)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.total.labels(**self._labels(), route=route, status=str(status)).observe(seconds)

    def count_rejected_input(self, reason: str) -> None:
        self.rejected_inputs.labels(**self._labels(), reason=reason).inc()

    def count_overloaded(self, reason: str) -> None:
        self.overloaded.labels(**self._labels(), reason=reason).inc()

    def count_timeout(self) -> None:
        self.timeouts.labels(**self._labels()).inc()


class ModelMetrics:
    """Per-call metrics of the model process."""

    def __init__(self, model: str, version: str, provider: str, max_batch_size: int):
        import prometheus_client as prom

        self._labels = {"model": model, "version": version, "provider": provider}
        self.batch_size = prom.Histogram(
            "image_classifier_batch_size",
            "Images in one model call, after adaptive batching merged concurrent requests",
            labelnames=LABELS,
            buckets=batch_size_buckets(max_batch_size),
        )
        self.run = prom.Histogram(
            "image_classifier_model_run_seconds",
            "Time of one model call in the model process",
            labelnames=LABELS,
            buckets=SECONDS_BUCKETS,
        )

    def observe_call(self, images: int, seconds: float) -> None:
        self.batch_size.labels(**self._labels).observe(images)
        self.run.labels(**self._labels).observe(seconds)


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Return powers of two up to ``max_batch_size``, and ``max_batch_size`` itself."""
    buckets = {max_batch_size}
    size = 1
    while size < max_batch_size:
        buckets.add(size)
        size *= 2
    return tuple(float(bucket) for bucket in sorted(buckets))


@functools.cache
def api_metrics(model: str, version: str) -> ApiMetrics:
    """Return this process's ApiMetrics; prometheus_client rejects a second registration of a name."""
    return ApiMetrics(model, version)


@functools.cache
def model_metrics(model: str, version: str, provider: str, max_batch_size: int) -> ModelMetrics:
    return ModelMetrics(model, version, provider, max_batch_size)
