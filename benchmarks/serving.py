"""Reference serving workload: our service against the in-process ceiling and a naive server.

    python benchmarks/serving.py [--seconds 20] [--users 1,4,16,32,64]

Model: timm resnet18, 18 classes, 224 px RGB, random weights, exported by the project's exporter.
Requests: JPEG files of 384x512 px cut from the photos that ship with scikit-learn, with random crops
and flips so payloads differ. Measured, all on this machine:

- ceiling: decode + preprocess + onnxruntime in one process, no HTTP, at batch 1..64;
- our service under locust: closed loop at each user count, then an open-loop rate sweep;
- the naive server (``benchmarks/naive_server.py``: FastAPI, Pillow, torch eager, no batching).

Prints the tables and the ratios against the targets, draws latency against throughput, and rewrites
the "Serving" section of BENCHMARKS.md. Locust runs on the same cores as the servers, so every
HTTP number includes the load generator's share of the CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import machine_line, make_checkpoint, write_section  # noqa: E402
from serving.launcher import ServiceProcess, free_port  # noqa: E402
from serving.loadtest import DEFAULT_LOCUSTFILE, LoadResult, run_locust  # noqa: E402

logger = logging.getLogger("benchmarks.serving")
SECTION = "## Serving"
CEILING_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
SWEEP_FRACTIONS = (0.5, 0.7, 0.9, 1.1)


@dataclass
class Level:
    label: str
    users: int
    result: LoadResult


def make_request_images(folder: Path, count: int = 64, seed: int = 0) -> Path:
    """Write ``count`` JPEG files of 384x512 (width x height) cut from scikit-learn's sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(array) for array in load_sample_images().images]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        photo = photos[index % len(photos)]
        height = int(rng.integers(300, photo.height + 1))
        width = int(height * 384 / 512)
        left = int(rng.integers(0, photo.width - width + 1))
        top = int(rng.integers(0, photo.height - height + 1))
        crop = photo.crop((left, top, left + width, top + height)).resize(
            (384, 512), Image.Resampling.BILINEAR
        )
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"request_{index:03d}.jpg", format="JPEG", quality=90)
    return folder


def measure_ceiling(export_dir: Path, images: list[Path], seconds: float) -> tuple[dict[int, float], float]:
    """Return images/s per batch size for decode + preprocess + onnxruntime, and the batch-1 model ms."""
    from serving.engine import OnnxClassifier
    from serving.preprocess import load_array

    classifier = OnnxClassifier(export_dir)
    payloads = [path.read_bytes() for path in images]
    rates = {}
    for batch_size in CEILING_BATCH_SIZES:
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or done == 0:
            chosen = [payloads[(done + i) % len(payloads)] for i in range(batch_size)]
            arrays = [load_array(data, classifier.spec) for data in chosen]
            classifier.session.infer(classifier.postprocessor.to_batch(arrays))
            done += batch_size
        rates[batch_size] = done / (time.perf_counter() - start)
    single = classifier.postprocessor.to_batch([load_array(payloads[0], classifier.spec)])
    timings = []
    for _ in range(30):
        start = time.perf_counter()
        classifier.session.infer(single)
        timings.append(time.perf_counter() - start)
    return rates, 1000 * float(np.median(timings))


def run_level(url: str, users: int, seconds: int, report_dir: Path, rate: float | None = None) -> LoadResult:
    if rate is None:
        os.environ.pop("LOAD_RATE", None)
    else:
        os.environ["LOAD_RATE"] = f"{rate:.4f}"
    result = run_locust(url, users, seconds, DEFAULT_LOCUSTFILE, report_dir)
    logger.info("%s users=%d rate=%s: %s", url, users, rate, result)
    return result


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the naive server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready after {timeout:.0f} s")


def run_naive(checkpoint: Path, users: list[int], seconds: int, report_root: Path) -> list[Level]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(REPO / "benchmarks" / "naive_server.py"), "--checkpoint", str(checkpoint)]
    process = subprocess.Popen([*command, "--port", str(port)], cwd=REPO, start_new_session=True)
    try:
        wait_ready(url, process)
        return [Level(f"naive {n}", n, run_level(url, n, seconds, report_root / f"naive_{n}")) for n in users]
    finally:
        process.terminate()
        process.wait(timeout=30)


def plot(levels: list[Level], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for prefix, marker in (("ours closed", "o"), ("ours open", "s"), ("naive", "^")):
        chosen = [level for level in levels if level.label.startswith(prefix)]
        if not chosen:
            continue
        throughput = [level.result.goodput_per_second for level in chosen]
        axis.plot(throughput, [level.result.p50_ms for level in chosen], marker=marker, label=f"{prefix} p50")
        axis.plot(
            throughput,
            [level.result.p99_ms for level in chosen],
            marker=marker,
            linestyle="--",
            label=f"{prefix} p99",
        )
    axis.set_xlabel("successful responses/s (one image each)")
    axis.set_ylabel("latency (ms)")
    axis.set_yscale("log")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def level_rows(levels: list[Level]) -> list[str]:
    rows = [
        "| run | users | req/s | ok/s | p50 ms | p95 ms | p99 ms | errors | 429s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for level in levels:
        r = level.result
        rejected_rate = r.rejected / max(r.requests, 1)
        rows.append(
            f"| {level.label} | {level.users} | {r.requests_per_second:.1f} | {r.goodput_per_second:.1f} "
            f"| {r.p50_ms:.0f} "
            f"| {r.p95_ms:.0f} | {r.p99_ms:.0f} | {r.error_rate:.2%} | {rejected_rate:.2%} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="duration of each load level (default: 20)")
    parser.add_argument(
        "--users", default="1,4,16,32,64", help="closed-loop user counts (default: 1,4,16,32,64)"
    )
    parser.add_argument(
        "--naive-users", default="1,32", help="user counts for the naive server (default: 1,32)"
    )
    parser.add_argument("--skip-naive", action="store_true", help="do not run the naive baseline")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md unchanged")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    users = [int(n) for n in args.users.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        from training.export import export

        checkpoint = make_checkpoint("resnet18", 224, 18, "RGB", workdir)
        export_dir = export(checkpoint, workdir / "exports" / "resnet18")
        images = make_request_images(workdir / "requests")
        os.environ["LOAD_IMAGES"] = str(images)
        ceiling, batch1_ms = measure_ceiling(export_dir, sorted(images.iterdir()), seconds=3.0)
        logger.info("ceiling images/s by batch size: %s; batch-1 model time %.1f ms", ceiling, batch1_ms)

        levels: list[Level] = []
        with ServiceProcess(export_dir, log_path=workdir / "service.log") as service:
            for n in users:
                levels.append(
                    Level(
                        f"ours closed {n}", n, run_level(service.url, n, args.seconds, workdir / f"ours_{n}")
                    )
                )
            # Saturation is the most successful responses per second; 429s are fast but do no work.
            saturation = max(level.result.goodput_per_second for level in levels)
            for fraction in SWEEP_FRACTIONS:
                target = fraction * saturation
                result = run_level(
                    service.url, 64, args.seconds, workdir / f"open_{fraction}", rate=target / 64
                )
                levels.append(Level(f"ours open {fraction:.0%} of saturation", 64, result))
        if not args.skip_naive:
            levels += run_naive(
                checkpoint, [int(n) for n in args.naive_users.split(",")], args.seconds, workdir
            )
        if not args.no_write:
            plot(levels, REPO / "benchmarks" / "serving_latency.png")

    section = render(levels, ceiling, batch1_ms, saturation, args)
    print(section)
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", SECTION, section)
    return 0


def render(levels: list[Level], ceiling: dict[int, float], batch1_ms: float, saturation: float, args) -> str:
    by_label = {level.label: level.result for level in levels}
    ours_1 = by_label.get("ours closed 1")
    ours_32 = by_label.get("ours closed 32")
    naive_32 = by_label.get("naive 32")
    at_70 = by_label.get("ours open 70% of saturation")
    best_ceiling = max(ceiling.values())
    targets = [
        (
            "ours / ceiling at saturation",
            saturation / best_ceiling,
            ">= 0.90",
            saturation / best_ceiling >= 0.90,
        ),
    ]
    if ours_32 and naive_32:
        ratio = ours_32.goodput_per_second / max(naive_32.goodput_per_second, 1e-9)
        targets.append(("ours / naive at 32 users", ratio, ">= 2.5", ratio >= 2.5))
    if ours_1:
        margin = ours_1.p50_ms - batch1_ms
        targets.append(("p50 at 1 user - batch-1 model time (ms)", margin, "<= 8", margin <= 8))
    if at_70:
        ratio = at_70.p99_ms / at_70.p50_ms
        targets.append(("p99 / p50 at 70 % of saturation", ratio, "<= 2", ratio <= 2))
    lines = [
        SECTION,
        "",
        machine_line() + " Locust shares the cores with the servers.",
        f"Command: `python benchmarks/serving.py --seconds {args.seconds} --users {args.users}`",
        "Model: timm resnet18, 18 classes, 224 px RGB, random weights; requests: one 384x512 JPEG each.",
        "",
        "### Targets",
        "",
        "| measure | value | target | met |",
        "| --- | --- | --- | --- |",
        *[
            f"| {name} | {value:.2f} | {target} | {'yes' if met else 'no'} |"
            for name, value, target, met in targets
        ],
        "",
        "### Ceiling: decode + preprocess + onnxruntime in one process",
        "",
        f"Batch-1 model time (onnxruntime alone): {batch1_ms:.1f} ms.",
        "",
        "| batch | images/s |",
        "| --- | --- |",
        *[f"| {batch_size} | {rate:.1f} |" for batch_size, rate in ceiling.items()],
        "",
        "### Under load",
        "",
        *level_rows(levels),
        "",
        "![latency against throughput](benchmarks/serving_latency.png)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
