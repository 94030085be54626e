"""The locust gate against the real service: passes within limits, fails past them."""

import subprocess
import sys

import pytest

from serving.loadtest import Limits, LoadResult, broken_limits, check_loopback, parse_stats


def run_gate(url, report_dir, images, *limits):
    command = [
        sys.executable, "-m", "serving.loadtest",
        "--host", url, "--users", "2", "--run-time", "3",
        "--report-dir", str(report_dir), *limits,
    ]  # fmt: skip
    env = {"LOAD_IMAGES": str(images), "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)


def test_gate_passes_within_limits(service, digit_pngs, tmp_path):
    paths, _ = digit_pngs
    result = run_gate(service.url, tmp_path, paths[0].parent, "--p95-ms", "5000", "--p99-ms", "10000")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "p95 ms" in result.stdout
    stats = parse_stats(tmp_path / "locust_stats.csv")
    assert stats.requests > 0
    assert stats.failures == 0


def test_gate_writes_report(service, digit_pngs, tmp_path):
    paths, _ = digit_pngs
    run_gate(service.url, tmp_path, paths[0].parent)
    for name in ("locust_stats.csv", "locust_stats_history.csv", "report.html", "latency.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("flag", ["--p95-ms", "--p99-ms"])
def test_gate_fails_over_latency_limit(service, digit_pngs, tmp_path, flag):
    paths, _ = digit_pngs
    result = run_gate(service.url, tmp_path, paths[0].parent, flag, "0.001")
    assert result.returncode == 1
    assert f"{flag[2:5]} " in result.stderr
    assert "over the limit" in result.stderr


def test_gate_fails_on_errors(service, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.png").write_bytes(b"not a png")
    result = run_gate(service.url, tmp_path / "report", images)
    assert result.returncode == 1
    assert "error rate 100.00%" in result.stderr


def test_gate_error_rate_limit_allows_errors(service, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.png").write_bytes(b"not a png")
    result = run_gate(service.url, tmp_path / "report", images, "--max-error-rate", "1.0")
    assert result.returncode == 0, result.stderr[-2000:]


def test_stats_count_429_apart(tmp_path):
    header = "Type,Name,Request Count,Failure Count,Requests/s,Failures/s,50%,95%,99%\n"
    rows = [
        "POST,/predict,90,2,9.0,0.2,10,20,30\n",
        "POST,/predict 429,10,0,1.0,0.0,1,2,3\n",
        ",Aggregated,100,2,10.0,0.2,9,19,29\n",
    ]
    path = tmp_path / "stats.csv"
    path.write_text(header + "".join(rows))
    result = parse_stats(path)
    assert result.requests == 100
    assert result.rejected == 10
    assert result.failures == 2
    assert result.p95_ms == 20.0
    assert result.goodput_per_second == pytest.approx(8.8)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (Limits(p95_ms=25.0), []),
        (Limits(p95_ms=15.0), ["p95 20.0 ms is over the limit of 15.0 ms by 5.0 ms"]),
        (Limits(p99_ms=29.5), ["p99 30.0 ms is over the limit of 29.5 ms by 0.5 ms"]),
        (Limits(max_error_rate=0.05), []),
    ],
)
def test_broken_limits_messages(limits, expected):
    result = LoadResult(
        requests=100, failures=2, rejected=0, p50_ms=10, p95_ms=20, p99_ms=30, requests_per_second=5
    )
    messages = broken_limits(result, limits)
    assert [m for m in messages if "error rate" not in m] == expected


def test_error_rate_over_limit_message():
    result = LoadResult(
        requests=100, failures=2, rejected=0, p50_ms=1, p95_ms=1, p99_ms=1, requests_per_second=1
    )
    assert broken_limits(result, Limits(max_error_rate=0.01)) == [
        "error rate 2.00% (2 of 100) is over the limit of 1.00% by 1.00%"
    ]


@pytest.mark.parametrize("url", ["http://10.0.0.1:3000", "http://example.com", "http://192.168.1.2"])
def test_non_loopback_host_rejected(url):
    with pytest.raises(ValueError, match="not a loopback"):
        check_loopback(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:3000", "http://[::1]:3000", "http://localhost:1"])
def test_loopback_host_accepted(url):
    check_loopback(url)


def test_cli_rejects_remote_host_before_sending(tmp_path):
    command = [
        sys.executable,
        "-m",
        "serving.loadtest",
        "--host",
        "http://10.1.2.3:3000",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not a loopback" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_locustfile_reads_class_list(service):
    # In a subprocess, because importing locust patches the standard library with gevent.
    code = (
        "import sys, types\n"
        "sys.path.insert(0, 'tests/load')\n"
        "import locustfile\n"
        f"locustfile.on_test_start(types.SimpleNamespace(host={service.url!r}))\n"
        "print(sorted(locustfile.CLASS_NAMES))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str([str(i) for i in range(10)])
