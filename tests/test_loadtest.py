"""The locust gate against the real service: passes within limits, fails past them."""

import subprocess
import sys

import pytest

from serving.loadtest import check_loopback, parse_stats


def run_gate(url, tmp_path, p95_ms, images):
    command = [
        sys.executable, "-m", "serving.loadtest",
        "--host", url, "--users", "2", "--run-time", "4",
        "--p95-ms", str(p95_ms), "--report-dir", str(tmp_path),
    ]  # fmt: skip
    env = {"LOAD_IMAGES": str(images), "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)


def test_gate_passes_within_limit(service, digit_pngs, tmp_path):
    paths, _ = digit_pngs
    result = run_gate(service.url, tmp_path, 5000, paths[0].parent)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "p95 ms" in result.stdout
    stats = parse_stats(tmp_path / "locust_stats.csv")
    assert stats.requests > 0
    assert stats.failures == 0


def test_gate_fails_over_limit(service, digit_pngs, tmp_path):
    paths, _ = digit_pngs
    result = run_gate(service.url, tmp_path, 0.001, paths[0].parent)
    assert result.returncode == 1
    assert "over the limit" in result.stderr


@pytest.mark.parametrize("url", ["http://10.0.0.1:3000", "http://example.com", "http://192.168.1.2"])
def test_non_loopback_host_rejected(url):
    with pytest.raises(ValueError, match="not a loopback"):
        check_loopback(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:3000", "http://[::1]:3000", "http://localhost:1"])
def test_loopback_host_accepted(url):
    check_loopback(url)
