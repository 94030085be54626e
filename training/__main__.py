"""Command line: ``python -m training {train,evaluate,export,predict} ...``."""

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
        "--config", type=Path, help="YAML config file, e.g. configs/digits.yaml (required unless --resume)"
    )
    train.add_argument(
        "--resume",
        type=Path,
        help="continue a run from its last.pt, in the same folder, with the checkpoint's config; "
        "--set overrides apply on top (e.g. --set train.epochs=20)",
    )
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set optimizer.lr=0.01 (repeatable; YAML values)",
    )
    add_evaluate_parser(commands)

    export = commands.add_parser("export", help="write ONNX, TorchScript and manifest.json from a checkpoint")
    export.add_argument("--checkpoint", type=Path, required=True, help="a best.pt or last.pt file")
    export.add_argument(
        "--out", type=Path, required=True, help="model folder; the export goes to <out>/<version>/"
    )
    export.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="maximum absolute logit difference allowed against eager PyTorch (default: 1e-4)",
    )
    export.add_argument(
        "--version", default=None, help="positive integer version folder under --out (default: highest + 1)"
    )
    export.add_argument(
        "--exporter",
        choices=["auto", "dynamo", "torchscript"],
        default="auto",
        help="ONNX exporter; auto tries dynamo, then torchscript, and keeps the first within tolerance "
        "(default: auto)",
    )
    export.add_argument(
        "--input-format",
        choices=["uint8_nhwc", "float32_nchw"],
        default="uint8_nhwc",
        help="graph input: uint8 pixels normalized in the graph, or normalized float32 (default: uint8_nhwc)",
    )
    export.add_argument(
        "--allow-tracer-warnings",
        action="store_true",
        help="keep a traced TorchScript model even when tracing warned (default: such a warning is an error)",
    )
    export.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static QDQ)")
    export.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx for GPUs")
    export.add_argument(
        "--fp16-tolerance",
        type=float,
        default=1e-2,
        help="maximum absolute probability difference of the fp16 graph (default: 1e-2)",
    )

    predict = commands.add_parser("predict", help="predict every image under a folder with the eager model")
    predict.add_argument("--checkpoint", type=Path, required=True, help="a best.pt or last.pt file")
    predict.add_argument(
        "--images", type=Path, help="folder of images (searched recursively); with --info, the image folder"
    )
    predict.add_argument(
        "--info",
        type=Path,
        help="submission template ImageID,ans, e.g. eval/info.csv; its images are read from eval/images",
    )
    predict.add_argument(
        "--out",
        type=Path,
        required=True,
        help="CSV file to write: path,class_id,label,score, or ImageID,ans with --info",
    )
    predict.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    return parser


def add_evaluate_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="print the metrics of a checkpoint and write a confusion-matrix PNG"
    )
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="a best.pt or last.pt file")
    evaluate.add_argument(
        "--data",
        default="val",
        help="'val' for the validation split of the checkpoint's config, or a folder-per-class tree "
        "(default: val)",
    )
    evaluate.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <checkpoint folder>/eval)"
    )
    evaluate.add_argument(
        "--tta", choices=["none", "hflip"], default=None, help="test-time augmentation (default: train.tta)"
    )
    evaluate.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    evaluate.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:N]' (default: cpu)")


def run_train(args: argparse.Namespace) -> None:
    """Train or resume; print the run folder on process 0 (torchrun starts several processes)."""
    import os

    from training.checkpoint import load_checkpoint
    from training.config import ConfigError, load_config
    from training.resume import config_for_resume
    from training.train import train

    if args.resume is not None and args.config is not None:
        raise ConfigError("give --config for a new run or --resume for an existing one, not both")
    if args.resume is None and args.config is None:
        raise ConfigError("--config is required unless --resume names a checkpoint")
    if args.resume is not None:
        config = config_for_resume(load_checkpoint(args.resume), args.overrides)
    else:
        config = load_config(args.config, args.overrides)
    run_dir = train(config, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        print(run_dir)


def run_evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate_checkpoint

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    report = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.out,
        tta=args.tta,
        batch_size=args.batch_size,
        device_name=args.device,
    )
    print(f"{report.images} images from {args.data}")
    print(report.table)
    print(report.confusion_png)


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
            run_train(args)
        elif args.command == "evaluate":
            run_evaluate(args)
        elif args.command == "export":
            from training.export import ExportOptions, export

            options = ExportOptions(
                tolerance=args.tolerance,
                version=args.version,
                exporter=args.exporter,
                input_format=args.input_format,
                allow_tracer_warnings=args.allow_tracer_warnings,
                int8=args.int8,
                fp16=args.fp16,
                fp16_tolerance=args.fp16_tolerance,
            )
            print(export(args.checkpoint, args.out, options))
        elif args.command == "predict":
            from training.predict import run_predict

            print(run_predict(args.checkpoint, args.out, args.images, args.info, args.batch_size))
    except (
        ConfigError,
        CheckpointError,
        ExportError,
        FileNotFoundError,
        ValueError,
        FloatingPointError,
    ) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
