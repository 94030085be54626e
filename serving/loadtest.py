"""Run locust headless against a service and check latency and error limits (an SLO gate).

    python -m serving.loadtest --host http://127.0.0.1:3000 --users 8 --run-time 20 --p95-ms 500

Prints requests, failures, 429s, p50/p95/p99 latency and requests/s, writes locust's CSV and HTML
report and a PNG of latency and throughput over time to ``--report-dir``, and exits 1 when a limit
is broken, saying which and by how much. Only loopback hosts are accepted unless
``--allow-remote-host`` is given, so a typo cannot load another machine.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import logging
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger("serving.loadtest")

DEFAULT_LOCUSTFILE = Path(__file__).resolve().parent.parent / "tests" / "load" / "locustfile.py"
REJECTED_SUFFIX = " 429"


@dataclass(frozen=True)
class LoadResult:
    requests: int
    failures: int
    rejected: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests_per_second: float
    # Successful responses per second: all requests but failures and 429s.
    goodput_per_second: float = float("nan")

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def table(self) -> str:
        header = (
            f"{'requests':>9} {'failures':>9} {'429s':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'req/s':>8} {'ok/s':>8}"
        )
        row = (
            f"{self.requests:>9d} {self.failures:>9d} {self.rejected:>6d} {self.p50_ms:>8.1f} "
            f"{self.p95_ms:>8.1f} {self.p99_ms:>8.1f} {self.requests_per_second:>8.1f} "
            f"{self.goodput_per_second:>8.1f}"
        )
        return f"{header}\n{row}"


@dataclass(frozen=True)
class Limits:
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_error_rate: float = 0.0


def check_loopback(url: str) -> None:
    """Raise ValueError unless the URL's host is a loopback address or ``localhost``."""
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
        raise ValueError(
            f"--host {url!r} is not a loopback address; allowed: 127.0.0.0/8, [::1], localhost "
            "(pass --allow-remote-host to test a service on another machine you run)"
        )


def _number(row: dict[str, str], key: str) -> float:
    value = row.get(key, "")
    return float(value) if value not in ("", "N/A") else float("nan")


def parse_stats(path: Path) -> LoadResult:
    """Read locust's ``*_stats.csv``; 429 rows (named ``... 429``) are counted apart from the others."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    aggregated = next((row for row in rows if row["Name"] == "Aggregated"), None)
    if aggregated is None:
        raise RuntimeError(f"{path} has no Aggregated row; did locust send any request?")
    rejected = sum(int(row["Request Count"]) for row in rows if row["Name"].endswith(REJECTED_SUFFIX))
    answered = [
        row for row in rows if row["Name"] != "Aggregated" and not row["Name"].endswith(REJECTED_SUFFIX)
    ]
    goodput = sum(_number(row, "Requests/s") - _number(row, "Failures/s") for row in answered)
    # Latency is read from the one request name that is not a 429, so fast rejections do not hide
    # slow responses. With several request names, locust's aggregate over all of them is used.
    latency_row = answered[0] if len(answered) == 1 else aggregated
    return LoadResult(
        requests=int(aggregated["Request Count"]),
        failures=int(aggregated["Failure Count"]),
        rejected=rejected,
        p50_ms=_number(latency_row, "50%"),
        p95_ms=_number(latency_row, "95%"),
        p99_ms=_number(latency_row, "99%"),
        requests_per_second=_number(aggregated, "Requests/s"),
        goodput_per_second=goodput,
    )


def broken_limits(result: LoadResult, limits: Limits) -> list[str]:
    """Return one sentence per broken limit, with the measured value and the margin."""
    broken = []
    if result.requests == 0:
        broken.append("no request was sent")
    if result.error_rate > limits.max_error_rate:
        broken.append(
            f"error rate {result.error_rate:.2%} ({result.failures} of {result.requests}) is over the limit "
            f"of {limits.max_error_rate:.2%} by {result.error_rate - limits.max_error_rate:.2%}"
        )
    for name, measured, limit in (
        ("p95", result.p95_ms, limits.p95_ms),
        ("p99", result.p99_ms, limits.p99_ms),
    ):
        if limit is not None and not measured <= limit:
            broken.append(
                f"{name} {measured:.1f} ms is over the limit of {limit:.1f} ms by {measured - limit:.1f} ms"
            )
    return broken


def plot_history(history: Path, target: Path) -> None:
    """Draw latency percentiles and throughput over time from locust's stats history CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with history.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    if not rows:
        raise RuntimeError(f"{history} has no Aggregated rows to plot")
    start = int(rows[0]["Timestamp"])
    seconds = [int(row["Timestamp"]) - start for row in rows]
    figure, (latency_axis, rate_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for percentile in ("50%", "95%", "99%"):
        latency_axis.plot(seconds, [_number(row, percentile) for row in rows], label=f"p{percentile[:-1]}")
    latency_axis.set_ylabel("latency (ms)")
    latency_axis.legend()
    rate_axis.plot(seconds, [_number(row, "Requests/s") for row in rows], label="requests/s")
    rate_axis.plot(seconds, [_number(row, "Failures/s") for row in rows], label="failures/s")
    rate_axis.set_ylabel("per second")
    rate_axis.set_xlabel("time since start (s)")
    rate_axis.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)


def run_locust(
    host: str,
    users: int,
    run_time: int,
    locustfile: Path,
    report_dir: Path,
    spawn_rate: float | None = None,
) -> LoadResult:
    """Run locust headless for ``run_time`` seconds; return the aggregated result."""
    report_dir.mkdir(parents=True, exist_ok=True)
    prefix = report_dir / "locust"
    command = [
        sys.executable, "-m", "locust",
        "-f", str(locustfile),
        "--headless",
        "--users", str(users),
        "--spawn-rate", str(spawn_rate or users),
        "--run-time", f"{run_time}s",
        "--stop-timeout", "10",
        "--host", host,
        "--csv", str(prefix),
        "--csv-full-history",
        "--html", str(report_dir / "report.html"),
        "--only-summary",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    logger.info("running: %s", " ".join(command))
    # locust exits 1 when a request failed; the limits decide here, so its exit code is not used.
    # The timeout is a backstop for a hung locust: the run time, the stop timeout and start-up.
    completed = subprocess.run(command, timeout=run_time + 120, check=False)
    stats = Path(f"{prefix}_stats.csv")
    if not stats.is_file():
        raise RuntimeError(f"locust exited with code {completed.returncode} and wrote no {stats}")
    history = Path(f"{prefix}_stats_history.csv")
    if history.is_file():
        plot_history(history, report_dir / "latency.png")
    return parse_stats(stats)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.loadtest", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="http://127.0.0.1:3000", help="service URL (default: %(default)s)")
    parser.add_argument("--users", type=int, default=8, help="concurrent users (default: %(default)s)")
    parser.add_argument(
        "--spawn-rate", type=float, default=None, help="users started per second (default: all at once)"
    )
    parser.add_argument("--run-time", type=int, default=20, help="duration in seconds (default: %(default)s)")
    parser.add_argument("--p95-ms", type=float, default=None, help="p95 latency limit in ms (default: none)")
    parser.add_argument("--p99-ms", type=float, default=None, help="p99 latency limit in ms (default: none)")
    parser.add_argument(
        "--max-error-rate",
        type=float,
        default=0.0,
        help="largest allowed share of failed requests, 0..1; 429s do not count (default: 0)",
    )
    parser.add_argument(
        "--locustfile",
        type=Path,
        default=DEFAULT_LOCUSTFILE,
        help="locust file (default: tests/load/locustfile.py)",
    )
    parser.add_argument(
        "--report-dir", type=Path, default=None, help="report folder (default: loadtest-report/<timestamp>)"
    )
    parser.add_argument(
        "--allow-remote-host",
        action="store_true",
        help="accept a non-loopback --host (default: loopback only)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if not args.allow_remote_host:
            check_loopback(args.host)
        if args.users < 1 or args.run_time < 1:
            raise ValueError(f"--users and --run-time must be positive, got {args.users} and {args.run_time}")
        if not 0.0 <= args.max_error_rate <= 1.0:
            raise ValueError(f"--max-error-rate must be between 0 and 1, got {args.max_error_rate}")
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    report_dir = args.report_dir or Path("loadtest-report") / datetime.now().strftime("%Y%m%d-%H%M%S")
    result = run_locust(args.host, args.users, args.run_time, args.locustfile, report_dir, args.spawn_rate)
    print(result.table())
    print(f"report: {report_dir}")
    broken = broken_limits(result, Limits(args.p95_ms, args.p99_ms, args.max_error_rate))
    for reason in broken:
        logger.error("load test failed: %s", reason)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
