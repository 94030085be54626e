"""Throughput of eager PyTorch, TorchScript, ONNX fp32 and ONNX int8, in images per second.

    python benchmarks/engines.py [--checkpoint runs/digits/<run>/best.pt] [--threads 2]

Two models: the digits model of a checkpoint (or a freshly initialized resnet18 at 32 px when no
checkpoint is given), and timm resnet18 with 18 classes at 224 px with random weights (speed does
not depend on the weights). Each is exported by the project's exporter with the int8 variant, then
timed at batch sizes 1, 8 and 32 on the CPU. Prints a table and rewrites the "Engines" section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BATCH_SIZES = (1, 8, 32)
SECTION = "## Engines"


def time_engine(run, images: np.ndarray, min_seconds: float) -> float:
    """Return images per second of ``run`` on ``images``, after one warm-up call."""
    run(images)
    calls = 0
    start = time.perf_counter()
    while True:
        run(images)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return calls * len(images) / elapsed


def engines_for(folder: Path, threads: int):
    import onnxruntime as ort
    import torch

    from serving.manifest import load_manifest

    manifest = load_manifest(folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {
        name: ort.InferenceSession(
            str(folder / file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        for name, file in (("onnx_fp32", manifest.onnx_file), ("onnx_int8", "model.int8.onnx"))
    }
    scripted = torch.jit.load(str(folder / manifest.torchscript_file)).eval()
    torch.set_num_threads(threads)

    def torch_run(module):
        def run(images):
            with torch.inference_mode():
                return module(torch.from_numpy(images))

        return run

    def onnx_run(session):
        return lambda images: session.run(None, {"images": images})[0]

    return manifest, scripted, torch_run, {name: onnx_run(s) for name, s in sessions.items()}


def benchmark_export(label: str, checkpoint: Path, eager_module, workdir: Path, threads: int, seconds: float):
    from training.export import export

    folder = export(checkpoint, workdir / label, int8=True)
    manifest, scripted, torch_run, onnx_runs = engines_for(folder, threads)
    runs = {"eager": torch_run(eager_module), "torchscript": torch_run(scripted), **onnx_runs}
    shape = (manifest.input.height, manifest.input.width, manifest.input.image_spec.channels)
    rows = []
    for batch_size in BATCH_SIZES:
        images = np.random.default_rng(0).integers(0, 256, (batch_size, *shape), dtype=np.uint8)
        rates = {name: time_engine(run, images, seconds) for name, run in runs.items()}
        rows.append((batch_size, rates))
    return rows, manifest.variants["int8"].metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="digits checkpoint (default: random resnet18)"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="threads per engine (default: all cores)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per cell in seconds (default: 2)")
    parser.add_argument("--skip-resnet224", action="store_true", help="only the digits model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from benchmarks.common import machine_line, make_checkpoint, write_section
    from training.export import load_model_from_checkpoint
    from training.export.wrappers import UInt8Input

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        digits = args.checkpoint or make_checkpoint("resnet18", 32, 10, "L", workdir)
        cases = [("digits resnet18 32px L, 10 classes", digits)]
        if not args.skip_resnet224:
            # NOTE: the 224 px model is calibrated and scored on the digits upsampled to 224 px, because
            # no face data ships with the project. Its int8 metrics mean little; its speed is the point.
            cases.append(
                ("resnet18 224px RGB, 18 classes", make_checkpoint("resnet18", 224, 18, "RGB", workdir))
            )
        for label, checkpoint in cases:
            model, config, _, _ = load_model_from_checkpoint(checkpoint)
            wrapper = UInt8Input(model, config.data.mean, config.data.std).eval()
            rows, int8 = benchmark_export(
                label.split()[0] + str(config.data.image_size),
                checkpoint,
                wrapper,
                workdir,
                args.threads,
                args.seconds,
            )
            results.append((label, rows, int8))

    lines = [
        SECTION,
        "",
        f"{machine_line()} {args.threads} threads per engine.",
        f"Command: `python benchmarks/engines.py --threads {args.threads} --seconds {args.seconds:g}"
        + (f" --checkpoint {args.checkpoint}`" if args.checkpoint else "`"),
        "",
    ]
    for label, rows, int8 in results:
        lines += [
            f"### {label}",
            "",
            "| batch | eager | torchscript | onnx fp32 | onnx int8 | int8 / fp32 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for batch_size, rates in rows:
            ratio = rates["onnx_int8"] / rates["onnx_fp32"]
            lines.append(
                f"| {batch_size} | {rates['eager']:.0f} | {rates['torchscript']:.0f} "
                f"| {rates['onnx_fp32']:.0f} | {rates['onnx_int8']:.0f} | {ratio:.2f} |"
            )
        lines += ["", "Images per second above; validation accuracy and macro F1 of fp32 and int8:", ""]
        lines += [f"- {name}: {value:.4f}" for name, value in sorted(int8.items())]
        lines.append("")
    section = "\n".join(lines)
    print(section)
    write_section(REPO / "BENCHMARKS.md", SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
