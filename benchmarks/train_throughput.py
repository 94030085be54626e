"""Training throughput of the project's loop against a bare PyTorch loop on the same model and data.

    python benchmarks/train_throughput.py                       # print the numbers
    python benchmarks/train_throughput.py --write BENCHMARKS.md  # and replace this benchmark's section

Both loops train the same model (a fresh copy of one initial state) on the same data loader for the
same number of micro-batches. The bare loop is ``zero_grad``, forward, cross-entropy, ``backward``,
``step``. The project's loop (``training.engine.train_one_epoch``) adds what ``train`` runs: the
non-finite loss check, epoch metrics, the progress bar, data-wait timing and log lines.

The loops alternate over several repeats. The reported ratio is that of the best throughput of each
loop, because load from other processes only ever slows a measurement down (the reasoning behind
``timeit``'s minimum). The median of the ratios of adjacent pairs is printed beside it. The target is
a ratio of at least 0.95.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from copy import deepcopy
from datetime import date
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import machine_line, write_section  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import build_data  # noqa: E402
from training.engine import LoopOptions, train_one_epoch  # noqa: E402
from training.metrics import EpochMetrics  # noqa: E402
from training.models import create_model  # noqa: E402
from training.optim import create_optimizer  # noqa: E402
from training.train import seed_everything  # noqa: E402

logger = logging.getLogger("benchmarks.train_throughput")

HEADING = "## Training throughput"
TARGET_RATIO = 0.95


def bare_loop(model, optimizer, loader: DataLoader, batches: int) -> float:
    """Train ``batches`` micro-batches the plain way; return images per second."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen = 0
    start = time.perf_counter()
    for index, (images, targets) in enumerate(loader):
        if index == batches:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(images), targets)
        loss.backward()
        optimizer.step()
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def project_loop(model, optimizer, loader: DataLoader, batches: int, num_classes: int) -> tuple[float, float]:
    """Train ``batches`` micro-batches with the project's loop; return images/s and data-wait share."""
    options = LoopOptions(limit_batches=batches, log_interval=10)
    metrics = EpochMetrics(num_classes, full=False)
    result = train_one_epoch(
        model, nn.CrossEntropyLoss(), optimizer, loader, torch.device("cpu"), 1, options, metrics=metrics
    )
    return result.images_per_second, result.data_wait_share


def measure(config, batches: int, repeats: int) -> dict:
    data = build_data(config)
    num_classes = len(data.class_names)
    loader = DataLoader(
        data.train, batch_size=config.data.batch_size, shuffle=True, num_workers=config.data.num_workers
    )
    in_chans = 1 if config.data.color_mode == "L" else 3
    initial = create_model(config.model, num_classes, in_chans)
    # One short untimed pass of each loop first, so one-time setup (allocations, lazy initialization)
    # counts against neither.
    for warm_up in ("bare", "ours"):
        model = deepcopy(initial)
        optimizer = create_optimizer(model.parameters(), config.optimizer)
        if warm_up == "bare":
            bare_loop(model, optimizer, loader, 3)
        else:
            project_loop(model, optimizer, loader, 3, num_classes)
    bare, ours, waits = [], [], []
    for repeat in range(repeats):
        for name in ("bare", "ours") if repeat % 2 == 0 else ("ours", "bare"):
            model = deepcopy(initial)
            optimizer = create_optimizer(model.parameters(), config.optimizer)
            if name == "bare":
                bare.append(bare_loop(model, optimizer, loader, batches))
            else:
                rate, wait = project_loop(model, optimizer, loader, batches, num_classes)
                ours.append(rate)
                waits.append(wait)
        logger.info("repeat %d: bare %.1f images/s, ours %.1f images/s", repeat + 1, bare[-1], ours[-1])
    return {
        "bare": bare,
        "ours": ours,
        "ratio": max(ours) / max(bare),
        "pair_ratio": statistics.median(o / b for o, b in zip(ours, bare, strict=True)),
        "data_wait_share": statistics.median(waits),
    }


def table_row(name: str, rates: list[float]) -> str:
    return f"| {name} | {max(rates):.1f} | {statistics.median(rates):.1f} | {min(rates):.1f} |"


def render_section(results: dict, config, batches: int, repeats: int, command: str) -> str:
    verdict = "met" if results["ratio"] >= TARGET_RATIO else "missed"
    wait = 100 * results["data_wait_share"]
    return "\n".join(
        [
            HEADING,
            "",
            f"{machine_line()} Measured {date.today().isoformat()} with {torch.get_num_threads()} torch "
            f"threads, torch {torch.__version__}.",
            "",
            f"Command: `{command}`",
            "",
            f"Workload: {config.model.name} on the digits at {config.data.image_size} px, batch size "
            f"{config.data.batch_size}, {config.data.num_workers} data loader workers, {batches} "
            f"micro-batches per measurement, {repeats} alternating repeats per loop.",
            "",
            "| loop | images/s, best | median | worst |",
            "| --- | ---: | ---: | ---: |",
            table_row("bare PyTorch loop", results["bare"]),
            table_row("`train_one_epoch`", results["ours"]),
            "",
            f"Ratio of the best throughputs: {results['ratio']:.3f} (target at least {TARGET_RATIO}: "
            f"{verdict}); median ratio of adjacent pairs: {results['pair_ratio']:.3f}. Share of the "
            f"project loop's time spent waiting for the data loader: {wait:.1f}% (median). A wide range "
            "between best and worst means other processes loaded the machine during the measurement.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, default=REPO / "configs" / "digits.yaml", help="training config"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batches", type=int, default=15, help="micro-batches per measurement (default: 15)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per loop (default: 5)")
    parser.add_argument("--write", type=Path, default=None, help="markdown file whose section to replace")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = load_config(args.config, args.overrides)
    # The same seed and deterministic-algorithm setting as the train command, for both loops.
    seed_everything(config.seed, config.train.deterministic)
    results = measure(config, args.batches, args.repeats)
    print(f"bare loop       {max(results['bare']):8.1f} images/s (best)")
    print(f"train_one_epoch {max(results['ours']):8.1f} images/s (best)")
    print(f"ratio           {results['ratio']:8.3f} (target >= {TARGET_RATIO})")
    print(f"pair ratio      {results['pair_ratio']:8.3f} (median of adjacent pairs)")
    print(f"data wait      {100 * results['data_wait_share']:7.1f}% of the project loop's time")
    if args.write is not None:
        command = "python benchmarks/train_throughput.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        section = render_section(results, config, args.batches, args.repeats, command.strip())
        write_section(args.write, HEADING, section)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
