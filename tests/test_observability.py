"""Prometheus metrics on /metrics and the startup and shutdown logs of the real service."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.launcher import ServiceProcess
from serving.observability import batch_size_buckets, library_versions

PROVIDER = "CPUExecutionProvider"
HISTOGRAMS = [
    "image_classifier_decode_seconds",
    "image_classifier_queue_wait_seconds",
    "image_classifier_inference_seconds",
    "image_classifier_request_seconds",
    "image_classifier_batch_size",
    "image_classifier_model_run_seconds",
]


@pytest.fixture(scope="module")
def observed(tiny_export, digit_pngs, tmp_path_factory):
    """Serve, send good and bad requests, read /metrics, stop; return the metrics and the log."""
    paths, _ = digit_pngs
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in paths[:5]]
    log_path = tmp_path_factory.mktemp("observability") / "service.log"
    env = {"SHUTDOWN_DELAY_S": "0", "MAX_BATCH_SIZE": "8", "API_THREADS": "3"}
    with ServiceProcess(tiny_export, env=env, log_path=log_path) as service:
        statuses = [
            httpx.post(f"{service.url}/predict", files=files, timeout=60).status_code,
            httpx.post(f"{service.url}/predict", content=b"not an image", timeout=60).status_code,
            httpx.post(f"{service.url}/predict", content=b"", timeout=60).status_code,
        ]
        text = httpx.get(f"{service.url}/metrics", timeout=10).text
    assert statuses == [200, 400, 400]
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    return samples, log_path.read_text()


def find(samples, name: str, **labels: str) -> list:
    return [sample for sample in samples if sample.name == name and labels.items() <= sample.labels.items()]


@pytest.mark.parametrize("name", HISTOGRAMS)
def test_histogram_labelled(observed, name):
    samples, _ = observed
    counts = find(samples, f"{name}_count", model="digits", version="1", provider=PROVIDER)
    assert counts, f"{name} has no sample labelled with the model, version and provider"
    assert sum(sample.value for sample in counts) > 0


def test_request_histogram_by_status(observed):
    samples, _ = observed
    ok = find(samples, "image_classifier_request_seconds_count", route="/predict", status="200")
    rejected = find(samples, "image_classifier_request_seconds_count", route="/predict", status="400")
    assert sum(sample.value for sample in ok) == 1
    assert sum(sample.value for sample in rejected) == 2


def test_batch_size_counts_images(observed, tiny_export):
    from serving.manifest import load_manifest

    samples, _ = observed
    # The readiness check sends one warm-up image and each golden image; then the 5-image request.
    images = 1 + len(load_manifest(tiny_export).golden) + 5
    (total,) = find(samples, "image_classifier_batch_size_sum", provider=PROVIDER)
    assert total.value == images


def test_rejected_inputs_by_reason(observed):
    samples, _ = observed
    (rejected,) = find(
        samples, "image_classifier_rejected_inputs_total", reason="invalid_image", provider=PROVIDER
    )
    assert rejected.value == 2


@pytest.mark.parametrize(
    "text",
    [
        "'onnxruntime-gpu': ",
        "'bentoml': '1.4",
        "'providers': ['CPUExecutionProvider']",
        "'intra_op_threads': ",
        "batching max_batch_size=8",
        "api_threads=3",
        "limits {'max_request_bytes'",
        "admission max_concurrent_requests=6 max_queued_requests=12",
        "warmed up batch sizes 1,8",
    ],
)
def test_startup_logged(observed, text):
    _, log = observed
    assert text in log


@pytest.mark.parametrize("process", ["model process", "API process"])
def test_shutdown_logged(observed, process):
    _, log = observed
    assert f"{process} shutting down" in log


@pytest.mark.parametrize(
    ("max_batch_size", "expected"), [(1, (1.0,)), (6, (1.0, 2.0, 4.0, 6.0)), (8, (1.0, 2.0, 4.0, 8.0))]
)
def test_batch_size_buckets(max_batch_size, expected):
    assert batch_size_buckets(max_batch_size) == expected


def test_library_versions_present():
    versions = library_versions()
    assert "python" in versions
    assert "numpy" in versions
