"""Command line: ``python -m training {train,export,predict} ...``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger("training")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a classifier and write checkpoints under runs/")
    train.add_argument(
        "--config", type=Path, required=True, help="YAML config file, e.g. configs/digits.yaml"
    )
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set optimizer.lr=0.01 (repeatable; YAML values)",
    )

    export = commands.add_parser("export", help="write ONNX, TorchScript and manifest.json from a checkpoint")
    export.add_argument("--checkpoint", type=Path, required=True, help="a best.pt or last.pt file")
    export.add_argument("--out", type=Path, required=True, help="output folder, e.g. exports/digits")
    export.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="maximum absolute logit difference allowed against eager PyTorch (default: 1e-4)",
    )
    export.add_argument("--version", default=None, help="export version (default: UTC timestamp)")

    predict = commands.add_parser("predict", help="predict every image under a folder with the eager model")
    predict.add_argument("--checkpoint", type=Path, required=True, help="a best.pt or last.pt file")
    predict.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    predict.add_argument("--out", type=Path, required=True, help="CSV file: path,class_id,label,score")
    predict.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    return parser


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The ONNX exporter logs every optimization pass at INFO.
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()

    from training.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.export import ExportError

    try:
        if args.command == "train":
            from training.config import load_config
            from training.train import train

            run_dir = train(load_config(args.config, args.overrides))
            print(run_dir)
        elif args.command == "export":
            from training.export import export

            print(export(args.checkpoint, args.out, tolerance=args.tolerance, version=args.version))
        elif args.command == "predict":
            from training.predict import write_predictions

            print(write_predictions(args.checkpoint, args.images, args.out, args.batch_size))
    except (ConfigError, CheckpointError, ExportError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
