"""Run locust headless against a local service and check the latency and error limits.

    python -m serving.loadtest --host http://127.0.0.1:3000 --users 8 --run-time 20 --p95-ms 500

Prints requests, failures, p50/p95/p99 latency and requests/s, and exits 1 when any request failed
or p95 is over ``--p95-ms``. Only loopback hosts are accepted, so a typo cannot load another machine.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger("serving.loadtest")

DEFAULT_LOCUSTFILE = Path(__file__).resolve().parent.parent / "tests" / "load" / "locustfile.py"


@dataclass(frozen=True)
class LoadResult:
    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests_per_second: float

    def table(self) -> str:
        header = f"{'requests':>9} {'failures':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>8}"
        row = (
            f"{self.requests:>9d} {self.failures:>9d} {self.p50_ms:>8.1f} {self.p95_ms:>8.1f} "
            f"{self.p99_ms:>8.1f} {self.requests_per_second:>8.1f}"
        )
        return f"{header}\n{row}"


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host is None:
        raise ValueError(f"--host {url!r} has no host name; use e.g. http://127.0.0.1:3000")
    if host == "localhost":
        return
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise ValueError(f"--host {url!r} is not a loopback address; allowed: 127.0.0.0/8, [::1], localhost")


def parse_stats(path: Path) -> LoadResult:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    if "Aggregated" not in rows:
        raise RuntimeError(f"{path} has no Aggregated row; did locust send any request?")
    row = rows["Aggregated"]

    def number(key: str) -> float:
        value = row.get(key, "")
        return float(value) if value not in ("", "N/A") else float("nan")

    return LoadResult(
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        p50_ms=number("50%"),
        p95_ms=number("95%"),
        p99_ms=number("99%"),
        requests_per_second=number("Requests/s"),
    )


def run_locust(
    host: str, users: int, run_time: int, locustfile: Path, report_dir: Path, spawn_rate: float | None = None
) -> LoadResult:
    report_dir.mkdir(parents=True, exist_ok=True)
    prefix = report_dir / "locust"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate or users),
        "--run-time",
        f"{run_time}s",
        "--stop-timeout",
        "10",
        "--host",
        host,
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    logger.info("running: %s", " ".join(command))
    # locust exits 1 when a request failed; the limits below decide, so its code is not used.
    completed = subprocess.run(command, timeout=run_time + 120, check=False)
    stats = Path(f"{prefix}_stats.csv")
    if not stats.is_file():
        raise RuntimeError(f"locust exited with code {completed.returncode} and wrote no {stats}")
    return parse_stats(stats)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.loadtest", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="http://127.0.0.1:3000", help="service URL (default: %(default)s)")
    parser.add_argument("--users", type=int, default=8, help="concurrent users (default: %(default)s)")
    parser.add_argument("--run-time", type=int, default=20, help="duration in seconds (default: %(default)s)")
    parser.add_argument("--p95-ms", type=float, default=1000.0, help="p95 limit in ms (default: %(default)s)")
    parser.add_argument(
        "--locustfile",
        type=Path,
        default=DEFAULT_LOCUSTFILE,
        help="locust file (default: tests/load/locustfile.py)",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="folder for locust's CSV files (default: a temporary folder)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        check_loopback(args.host)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    if args.users < 1 or args.run_time < 1:
        logger.error("--users and --run-time must be positive, got %d and %d", args.users, args.run_time)
        return 2
    report_dir = args.report_dir or Path(tempfile.mkdtemp(prefix="loadtest-"))
    result = run_locust(args.host, args.users, args.run_time, args.locustfile, report_dir)
    print(result.table())
    broken = []
    if result.failures > 0:
        broken.append(f"{result.failures} of {result.requests} requests failed")
    if not result.p95_ms <= args.p95_ms:
        broken.append(f"p95 {result.p95_ms:.1f} ms is over the limit of {args.p95_ms:.1f} ms")
    if result.requests == 0:
        broken.append("no request was sent")
    for reason in broken:
        logger.error("load test failed: %s", reason)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
