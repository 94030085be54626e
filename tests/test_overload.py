"""Admission control, request timeouts and behaviour past saturation, against the real service."""

from __future__ import annotations

import asyncio
import io
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.admission import AdmissionGate, inference_route
from serving.engine import OnnxClassifier
from serving.launcher import ServiceProcess
from serving.preprocess import load_array

RETRY_AFTER_S = 3
# One request in flight and one queued: a slow request and a queued one fill the service.
TIGHT_ENV = {
    "MAX_CONCURRENT_REQUESTS": "1",
    "MAX_QUEUED_REQUESTS": "1",
    "API_THREADS": "1",
    "REQUEST_TIMEOUT_S": "2",
    "RETRY_AFTER_S": str(RETRY_AFTER_S),
    "SHUTDOWN_DELAY_S": "0",
}
PROBES = ["/livez", "/readyz", "/healthz", "/metrics", "/model", "/v2", "/v2/health/live", "/v2/health/ready"]


def slow_request_files(count: int = 64, side: int = 4000) -> list:
    """Large smooth PNG files: small to send but seconds to decode and resize on 2 cores."""
    ramp = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    return [("images", (f"large_{i:02d}.png", buffer.getvalue(), "image/png")) for i in range(count)]


def one_file(digit_pngs, index: int = 0) -> list:
    paths, _ = digit_pngs
    path = paths[index]
    return [("images", (path.name, path.read_bytes(), "image/png"))]


class Background:
    """Send one request in a thread and keep its response, its error and how long it took."""

    def __init__(self, url: str, files: list):
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._send, args=(url, files))
        self.thread.start()

    def _send(self, url: str, files: list) -> None:
        started = time.monotonic()
        try:
            self.response = httpx.post(url, files=files, timeout=60)
        except httpx.HTTPError as exc:
            self.error = exc
        self.seconds = time.monotonic() - started

    def join(self) -> httpx.Response:
        self.thread.join(timeout=120)
        assert self.error is None, self.error
        assert self.response is not None
        return self.response


@pytest.fixture(scope="module")
def tight_service(tiny_export, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("overload") / "service.log"
    with ServiceProcess(tiny_export, env=TIGHT_ENV, log_path=log_path) as running:
        yield running


@pytest.fixture(scope="module")
def saturated(tight_service, digit_pngs, offline_model_name):
    """Fill the tight service with a slow request and a queued one, then probe it while full."""
    url = tight_service.url

    slow = Background(f"{url}/predict", slow_request_files())
    time.sleep(0.5)  # the slow request is admitted and decoding
    queued = Background(f"{url}/predict", one_file(digit_pngs))
    time.sleep(0.2)  # the small request waits in the queue

    rejected, latencies = [], []
    # One keep-alive connection: a 429 sent before the body was read must leave it usable.
    with httpx.Client(timeout=10) as client:
        for _ in range(10):
            started = time.perf_counter()
            rejected.append(client.post(f"{url}/predict", files=one_file(digit_pngs)))
            latencies.append(time.perf_counter() - started)

    oip = httpx.post(
        f"{url}/v2/models/{offline_model_name}/infer",
        json={"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]},
        timeout=10,
    )
    probes = {path: httpx.get(f"{url}{path}", timeout=10) for path in PROBES}
    print(
        f"\n429 latency over {len(latencies)} requests while full: median "
        f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    return {
        "slow": slow.join(),
        "slow_s": slow.seconds,
        "queued": queued.join(),
        "rejected": rejected,
        "oip": oip,
        "probes": probes,
    }


@pytest.fixture(scope="module")
def offline_model_name(tiny_export):
    return OnnxClassifier(tiny_export).manifest.name


def test_full_service_answers_429(saturated):
    for response in saturated["rejected"]:
        assert response.status_code == 429
        assert response.headers["retry-after"] == str(RETRY_AFTER_S)
        assert response.json()["error"]["code"] == "overloaded"
        assert "MAX_CONCURRENT_REQUESTS=1" in response.json()["error"]["message"]


def test_full_service_oip_429(saturated):
    assert saturated["oip"].status_code == 429
    assert saturated["oip"].headers["retry-after"] == str(RETRY_AFTER_S)
    assert isinstance(saturated["oip"].json()["error"], str)


@pytest.mark.parametrize("path", PROBES)
def test_probes_never_limited(saturated, path):
    assert saturated["probes"][path].status_code == 200


def test_slow_request_504(saturated):
    response = saturated["slow"]
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert "REQUEST_TIMEOUT_S=2" in response.json()["error"]["message"]
    print(f"\nthe slow request got its 504 after {saturated['slow_s']:.2f} s (REQUEST_TIMEOUT_S=2)")


def test_queued_request_504(saturated):
    response = saturated["queued"]
    assert response.status_code == 504
    assert "waiting for a slot" in response.json()["error"]["message"]


def test_timeouts_logged(saturated, tight_service):
    log = tight_service.log_path.read_text()
    assert "rejected request: 504 timeout" in log
    assert "rejected request: 429 overloaded" in log


def metric_total(url: str, name: str, **labels: str) -> float:
    """Sum the samples of a metric on /metrics whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def test_overload_counted_in_metrics(saturated, tight_service):
    url = tight_service.url
    admission = metric_total(url, "image_classifier_overload_rejections_total", reason="admission")
    rejected_seconds = metric_total(url, "image_classifier_request_seconds_sum", status="429")
    rejected_count = metric_total(url, "image_classifier_request_seconds_count", status="429")
    print(f"\n429s measured in the service: mean {rejected_seconds / rejected_count * 1000:.2f} ms")
    assert admission >= 11
    assert rejected_count == admission
    assert metric_total(url, "image_classifier_timeouts_total") >= 2


def test_service_recovers_after_timeouts(saturated, tight_service, digit_pngs):
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        status = httpx.post(
            f"{tight_service.url}/predict", files=one_file(digit_pngs), timeout=30
        ).status_code
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200


@pytest.fixture(scope="module")
def expected_classes(tiny_export, digit_pngs):
    paths, _ = digit_pngs
    offline = OnnxClassifier(tiny_export)
    rows = offline.predict_arrays([load_array(path, offline.spec) for path in paths])
    return {path.name: row[0].class_id for path, row in zip(paths, rows, strict=True)}


def send_checked(url: str, paths: list, expected: dict) -> tuple[int, bool]:
    """Post a few digits; return the status and whether a 200 named and classified each of them."""
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in paths]
    response = httpx.post(f"{url}/predict", files=files, timeout=30)
    if response.status_code != 200:
        return response.status_code, True
    predictions = response.json()["predictions"]
    own = [p["file"] for p in predictions] == [path.name for path in paths] and all(
        p["class_id"] == expected[p["file"]] for p in predictions
    )
    return 200, own


def measure_capacity(url: str, paths: list, expected: dict, workers: int, seconds: float) -> float:
    """Return successful (200) requests per second with ``workers`` clients sending back to back."""
    stop = time.monotonic() + seconds
    done = []

    def loop(offset: int) -> None:
        index = offset
        while time.monotonic() < stop:
            status, _ = send_checked(url, paths[index % 37 : index % 37 + 3], expected)
            if status == 200:
                done.append(1)
            index += workers

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(loop, range(workers)))
    return len(done) / seconds


def test_past_saturation_only_200_or_429(tiny_export, digit_pngs, expected_classes, tmp_path):
    """At 1.5 x the measured capacity for 10 s, every response is 200 or 429, and 200s are right."""
    paths, _ = digit_pngs
    env = {
        "MAX_CONCURRENT_REQUESTS": "2",
        "MAX_QUEUED_REQUESTS": "2",
        "API_THREADS": "2",
        "MAX_BATCH_SIZE": "4",
        "REQUEST_TIMEOUT_S": "10",
        "SHUTDOWN_DELAY_S": "0",
    }
    with ServiceProcess(tiny_export, env=env, log_path=tmp_path / "service.log") as service:
        capacity = measure_capacity(service.url, paths, expected_classes, workers=4, seconds=3.0)
        rate = 1.5 * capacity
        outcomes = []
        with ThreadPoolExecutor(64) as pool:
            futures = []
            started = time.monotonic()
            for index in range(int(rate * 10)):
                time.sleep(max(0.0, started + index / rate - time.monotonic()))
                futures.append(
                    pool.submit(
                        send_checked, service.url, paths[index % 37 : index % 37 + 3], expected_classes
                    )
                )
            outcomes = [future.result() for future in futures]
            elapsed = time.monotonic() - started
    statuses = [status for status, _ in outcomes]
    print(
        f"\ncapacity {capacity:.1f} requests/s; offered {rate:.1f}/s, sent {len(outcomes)} "
        f"in {elapsed:.1f} s: {statuses.count(200)} x 200, {statuses.count(429)} x 429"
    )
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) > 0
    assert statuses.count(429) > 0
    assert all(own for _, own in outcomes), "a 200 carried predictions for other images"


def post_one(url: str, digit_pngs, index: int) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=one_file(digit_pngs, index % 40), timeout=30)


def test_model_overload_becomes_429(tiny_export, digit_pngs, tmp_path):
    """BentoML's 503 for a batch predicted to miss MAX_LATENCY_MS reaches clients as 429."""
    env = {"MAX_LATENCY_MS": "1", "MAX_CONCURRENT_REQUESTS": "16", "MAX_QUEUED_REQUESTS": "16"}
    with ServiceProcess(
        tiny_export, env={**env, "SHUTDOWN_DELAY_S": "0"}, log_path=tmp_path / "log"
    ) as service:
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda index: post_one(service.url, digit_pngs, index), range(300)))
        declined = metric_total(service.url, "image_classifier_overload_rejections_total", reason="model")
    statuses = [response.status_code for response in responses]
    overloaded = [response for response in responses if response.status_code == 429]
    print(f"\nMAX_LATENCY_MS=1: {statuses.count(200)} x 200, {statuses.count(429)} x 429")
    assert set(statuses) <= {200, 429}
    assert declined == len(overloaded)
    assert overloaded, "no batch was declined; the dispatcher never predicted a miss"
    assert overloaded[0].headers["retry-after"] == "1"
    assert "MAX_LATENCY_MS=1 ms" in overloaded[0].json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/predict", "/predict"),
        ("POST", "/v2/models/digits/infer", "/v2/infer"),
        ("POST", "/v2/models/digits/versions/1/infer", "/v2/infer"),
        ("GET", "/predict", None),
        ("GET", "/v2/health/ready", None),
        ("POST", "/readyz", None),
    ],
)
def test_inference_route(method, path, route):
    assert inference_route({"type": "http", "method": method, "path": path}) == route


def run_gate_scenario(max_in_flight: int, max_queued: int, arrivals: int, timeout_s: float) -> list[str]:
    async def scenario() -> list[str]:
        gate = AdmissionGate(max_in_flight, max_queued)
        deadline = time.monotonic() + timeout_s
        tasks = [asyncio.ensure_future(gate.enter(deadline)) for _ in range(arrivals)]
        await asyncio.sleep(0.01)
        gate.release()
        return [await task for task in tasks]

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("max_in_flight", "max_queued", "arrivals", "expected"),
    [
        (1, 0, 3, ["admitted", "rejected", "rejected"]),
        (1, 1, 3, ["admitted", "admitted", "rejected"]),
        (2, 2, 4, ["admitted", "admitted", "admitted", "timed_out"]),
    ],
)
def test_gate_outcomes(max_in_flight, max_queued, arrivals, expected):
    assert run_gate_scenario(max_in_flight, max_queued, arrivals, timeout_s=0.2) == expected


def test_gate_counts_after_timeout():
    async def scenario() -> tuple[int, int]:
        gate = AdmissionGate(1, 2)
        deadline = time.monotonic() + 0.05
        assert await gate.enter(deadline) == "admitted"
        assert await gate.enter(deadline) == "timed_out"
        gate.release()
        return gate.in_flight, gate.queued

    assert asyncio.run(scenario()) == (0, 0)


def test_gate_invalid_limits():
    with pytest.raises(ValueError, match="max_in_flight must be >= 1"):
        AdmissionGate(0, 1)
