"""Readiness, liveness, and the SIGTERM drain of the real service."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.launcher import ServiceProcess
from serving.lifecycle import Lifecycle, TransientCheckError
from serving.manifest import load_manifest


def get(service, path: str, timeout: float = 5.0) -> httpx.Response:
    return httpx.get(f"{service.url}{path}", timeout=timeout)


def wait_for_log(service, text: str, timeout: float = 120.0) -> str:
    """Return the service log once it contains ``text``; fail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = service.log_path.read_text()
        if text in log:
            return log
        assert service.process.poll() is None, f"the service exited; log:\n{log[-3000:]}"
        time.sleep(0.5)
    pytest.fail(f"{text!r} not in the service log after {timeout:.0f} s")


def probe_readyz(service, wait_s: float) -> httpx.Response:
    """Poll /readyz for ``wait_s`` seconds (it starts the startup checks) and return the last response."""
    deadline = time.monotonic() + wait_s
    response = None
    while time.monotonic() < deadline:
        try:
            response = get(service, "/readyz", timeout=2)
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    assert response is not None, "/readyz never answered"
    return response


@pytest.fixture
def broken_export(tiny_export, tmp_path):
    """A copy of the tiny export that the test then damages."""
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    return copy


def test_ready_after_golden_check(service):
    response = get(service, "/readyz")
    assert response.status_code == 200
    log = service.log_path.read_text()
    assert "golden images match the export" in log


def test_livez_always_cheap(service):
    started = time.monotonic()
    for _ in range(20):
        assert get(service, "/livez").status_code == 200
    assert time.monotonic() - started < 10


def test_golden_mismatch_not_ready(broken_export, tmp_path):
    manifest_path = broken_export / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["golden"], "the export has no golden images to damage"
    recorded = manifest["golden"][0]["class_ids"]
    manifest["golden"][0]["class_ids"] = [recorded[1], recorded[0], *recorded[2:]]
    manifest_path.write_text(json.dumps(manifest))
    golden_file = manifest["golden"][0]["file"]

    service = ServiceProcess(broken_export, log_path=tmp_path / "service.log", env={"SHUTDOWN_DELAY_S": "0"})
    service.start()
    try:
        wait_for_log(service, "Service image_classifier initialized")
        readyz = probe_readyz(service, wait_s=3)
        log = wait_for_log(service, "image_classifier state failed")
        readyz = get(service, "/readyz")
        predict = httpx.post(f"{service.url}/predict", content=b"x", timeout=10)
        livez = get(service, "/livez")
    finally:
        service.stop()
    assert readyz.status_code == 503
    assert readyz.json()["error"]["code"] == "not_ready"
    assert golden_file in readyz.json()["error"]["message"]
    assert golden_file in log
    assert predict.status_code == 503
    assert livez.status_code == 200


def test_checksum_mismatch_not_ready(broken_export, tmp_path):
    model_file = broken_export / load_manifest(broken_export).onnx_file
    model_file.write_bytes(model_file.read_bytes() + b"\x00")

    service = ServiceProcess(broken_export, log_path=tmp_path / "service.log", env={"SHUTDOWN_DELAY_S": "0"})
    service.start()
    try:
        log = wait_for_log(service, "onnx_model state failed")
        readyz = probe_readyz(service, wait_s=3)
        livez = get(service, "/livez")
    finally:
        service.stop()
    assert "sha256" in log
    assert readyz.status_code == 503
    assert livez.status_code == 200


def slow_request_files(count: int = 64, side: int = 2500) -> list:
    """Large smooth PNG files: small to send but slow to decode and resize."""
    ramp = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    data = buffer.getvalue()
    return [("images", (f"large_{i:02d}.png", data, "image/png")) for i in range(count)]


def test_sigterm_drains_in_flight(tiny_export, tmp_path):
    env = {"SHUTDOWN_DELAY_S": "3", "API_THREADS": "1"}
    service = ServiceProcess(tiny_export, log_path=tmp_path / "service.log", env=env)
    files = slow_request_files()
    result: dict = {}

    def send_slow_request():
        try:
            result["response"] = httpx.post(f"{service.url}/predict", files=files, timeout=120)
            result["finished"] = time.monotonic()
        except httpx.HTTPError as exc:
            result["error"] = exc

    with service:
        before = get(service, "/readyz")
        sender = threading.Thread(target=send_slow_request)
        sender.start()
        time.sleep(1.0)  # the upload is done and decoding has begun
        os.killpg(service.process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        during = get(service, "/readyz")
        sender.join(timeout=120)
        exit_code = service.process.wait(timeout=60)
    log = service.log_path.read_text()
    assert before.status_code == 200
    assert during.status_code == 503
    assert during.json()["error"]["code"] == "not_ready"
    assert "error" not in result, result.get("error")
    assert result["response"].status_code == 200
    assert result["finished"] > signalled, "the request was not in flight at SIGTERM"
    assert len(result["response"].json()["predictions"]) == len(files)
    assert exit_code is not None
    assert log.index("image_classifier state draining") < log.index("image_classifier: drained")


async def passing_check() -> str:
    return "checks passed"


async def transient_check() -> str:
    raise TransientCheckError("the model process is not ready yet")


async def failing_check() -> str:
    raise ValueError("golden/000.png: top-1 class is 3, the export recorded 5")


@pytest.mark.parametrize(
    ("check", "state", "ready"),
    [(passing_check, "ready", True), (transient_check, "starting", False), (failing_check, "failed", False)],
)
def test_lifecycle_check_outcomes(check, state, ready):
    lifecycle = Lifecycle("test")
    assert asyncio.run(lifecycle.check_once(check)) is ready
    assert lifecycle.state == state


def test_lifecycle_draining_stays_unready():
    lifecycle = Lifecycle("test")
    lifecycle.mark_draining("SIGTERM received")
    assert asyncio.run(lifecycle.check_once(passing_check)) is False
    assert lifecycle.state == "draining"
