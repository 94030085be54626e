"""The main job end to end on the embedded digits: train, export, serve, predict over HTTP, load-test.

    python scripts/demo.py            # what ``make demo`` runs

Each stage runs as its real command line. The script exits 0 only if every stage passed, the
served labels equal the eager PyTorch predictions on the same PNG files, and the load test met its
limits.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from sklearn.metrics import accuracy_score, f1_score

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from serving.launcher import ServiceProcess  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import build_data  # noqa: E402
from training.predict import predict_files  # noqa: E402

logger = logging.getLogger("demo")

MIN_ACCURACY = 0.95
FILES_PER_REQUEST = 8


class DemoError(RuntimeError):
    """Raised when a stage of the demo fails; the message names the stage and the reason."""


def run_stage(name: str, command: list[str]) -> str:
    """Run one command line, stream its log, and return the last line it printed to stdout."""
    logger.info("stage %s: %s", name, " ".join(command))
    completed = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    if completed.returncode != 0:
        raise DemoError(f"stage {name} failed with exit code {completed.returncode}")
    lines = completed.stdout.strip().splitlines()
    if not lines:
        raise DemoError(f"stage {name} printed no output path")
    return lines[-1]


def write_validation_pngs(run_dir: Path, out_dir: Path) -> tuple[list[Path], list[int]]:
    """Write the run's validation images as PNG files, named by index, and return their targets."""
    config = load_config(run_dir / "config.yaml")
    data = build_data(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, targets = [], []
    for index, sample in enumerate(data.val.samples):
        path = out_dir / f"{index:04d}_{data.class_names[sample.target]}.png"
        sample.load().save(path, format="PNG")
        paths.append(path)
        targets.append(sample.target)
    return paths, targets


def post_all(url: str, paths: list[Path]) -> list[int]:
    """POST every file in requests of FILES_PER_REQUEST, four at a time; return class ids in order."""
    chunks = [paths[i : i + FILES_PER_REQUEST] for i in range(0, len(paths), FILES_PER_REQUEST)]

    def post(chunk: list[Path]) -> list[int]:
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in chunk]
        response = httpx.post(f"{url}/predict", files=files, timeout=60)
        if response.status_code != 200:
            raise DemoError(f"POST /predict returned {response.status_code}: {response.text[:300]}")
        predictions = response.json()["predictions"]
        names = [p["file"] for p in predictions]
        expected = [p.name for p in chunk]
        if names != expected:
            raise DemoError(f"the service returned predictions for {names}, expected {expected}")
        return [p["class_id"] for p in predictions]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(post, chunks))
    return [class_id for chunk in results for class_id in chunk]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "digits.yaml")
    parser.add_argument("--export-dir", type=Path, default=REPO / "exports" / "digits")
    parser.add_argument("--load-seconds", type=int, default=20, help="load test duration (default: 20)")
    parser.add_argument("--p95-ms", type=float, default=1000.0, help="load test p95 limit (default: 1000)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    python = sys.executable
    try:
        train_command = [python, "-m", "training", "train", "--config", str(args.config)]
        for override in args.overrides:
            train_command += ["--set", override]
        run_dir = Path(run_stage("train", train_command))
        checkpoint = run_dir / "best.pt"
        run_stage(
            "export",
            [
                python,
                "-m",
                "training",
                "export",
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(args.export_dir),
            ],
        )

        paths, targets = write_validation_pngs(run_dir, run_dir / "val_png")
        offline_ids, _, _ = predict_files(checkpoint, paths)
        offline_accuracy = accuracy_score(targets, offline_ids)
        logger.info("offline (eager PyTorch) accuracy on %d PNG files: %.4f", len(paths), offline_accuracy)

        with ServiceProcess(args.export_dir, log_path=run_dir / "service.log") as service:
            logger.info("service ready on %s", service.url)
            served_ids = post_all(service.url, paths)
            served_accuracy = accuracy_score(targets, served_ids)
            served_f1 = f1_score(targets, served_ids, average="macro")
            mismatches = int(np.sum(np.asarray(served_ids) != np.asarray(offline_ids)))
            print(f"served accuracy {served_accuracy:.4f}  macro F1 {served_f1:.4f}  on {len(paths)} images")
            print(f"offline accuracy {offline_accuracy:.4f}; labels differing from offline: {mismatches}")
            if mismatches:
                raise DemoError(f"{mismatches} served labels differ from the offline evaluation")
            if served_accuracy < MIN_ACCURACY:
                raise DemoError(f"served accuracy {served_accuracy:.4f} is under {MIN_ACCURACY}")

            load = subprocess.run(
                [
                    python, "-m", "serving.loadtest",
                    "--host", service.url,
                    "--users", "8",
                    "--run-time", str(args.load_seconds),
                    "--p95-ms", str(args.p95_ms),
                    "--report-dir", str(run_dir / "loadtest"),
                ],
                cwd=REPO,
                env={**os.environ, "LOAD_IMAGES": str(run_dir / "val_png")},
                check=False,
            )  # fmt: skip
            if load.returncode != 0:
                raise DemoError(f"load test failed with exit code {load.returncode}")
    except DemoError as exc:
        logger.error("demo failed: %s", exc)
        return 1
    logger.info("demo passed: run %s, export %s", run_dir, args.export_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
