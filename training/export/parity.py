"""Parity between eager PyTorch and the exported engines, on real images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# An engine maps a uint8 batch [N, H, W, C] to its outputs by graph output name, in graph order.
# The first output is the float32 logits [N, num_classes]; three-head models add one per head.
Outputs = dict[str, np.ndarray]
Engine = Callable[[np.ndarray], Outputs]
LogitsEngine = Callable[[np.ndarray], np.ndarray]

PARITY_BATCH_SIZES = (1, 3, 8)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def first_output(engine: Engine) -> LogitsEngine:
    """Return an engine that returns only the first output, the class logits."""

    def run(images: np.ndarray) -> np.ndarray:
        return next(iter(engine(images).values()))

    return run


def run_batched(engine: Engine, images: np.ndarray, batch_size: int) -> Outputs:
    """Run ``engine`` over ``images`` in batches and concatenate each output."""
    batches = [engine(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def compare_outputs(outputs: Outputs, reference: Outputs) -> dict[str, float]:
    """Return the max absolute difference per output; an output missing or misshapen raises."""
    differences = {}
    for name, expected in reference.items():
        if name not in outputs:
            raise ValueError(f"output {name!r} is missing; the engine returned {list(outputs)}")
        if outputs[name].shape != expected.shape:
            raise ValueError(
                f"output {name!r} has shape {list(outputs[name].shape)}, expected {list(expected.shape)}"
            )
        differences[name] = max_abs(outputs[name], expected)
    return differences


def slice_outputs(outputs: Outputs, count: int) -> Outputs:
    return {name: value[:count] for name, value in outputs.items()}


def rowwise_consistency(engine: Engine, images: np.ndarray, batch_sizes: tuple[int, ...]) -> float:
    """Return the largest difference, over every output, between a row of a batch and the same image
    run alone.

    A batch axis that was specialized or mixed across rows at export shows up here, or as a wrong
    output shape, which raises ValueError.
    """
    largest = max(batch_sizes)
    singles = run_batched(engine, images[:largest], 1)
    worst = 0.0
    for batch_size in batch_sizes:
        batch = engine(images[:batch_size])
        for name, value in batch.items():
            if value.shape[0] != batch_size:
                raise ValueError(
                    f"output {name!r} of a batch of {batch_size} images has {value.shape[0]} rows"
                )
        worst = max(worst, *compare_outputs(batch, slice_outputs(singles, batch_size)).values())
    return worst


def measure_parity(
    reference: Engine,
    engines: dict[str, Engine],
    images: np.ndarray,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
) -> dict[str, float]:
    """Compare each engine with the reference on ``images``; flat keys ``<engine>_<measure>``.

    Every output gets ``<engine>_<output>_max_abs`` and ``<engine>_batch<B>_<output>_max_abs``; the
    first output (the class logits) also gets ``_probs_max_abs`` and ``_top1_agreement``.
    """
    if len(images) < max(batch_sizes):
        raise ValueError(f"parity needs at least {max(batch_sizes)} images, got {len(images)}")
    reference_outputs = run_batched(reference, images, max(batch_sizes))
    reference_logits = next(iter(reference_outputs.values()))
    report: dict[str, float] = {}
    for name, engine in engines.items():
        for batch_size in batch_sizes:
            differences = compare_outputs(
                engine(images[:batch_size]), slice_outputs(reference_outputs, batch_size)
            )
            report |= {f"{name}_batch{batch_size}_{output}_max_abs": d for output, d in differences.items()}
        outputs = run_batched(engine, images, max(batch_sizes))
        report |= {
            f"{name}_{output}_max_abs": d for output, d in compare_outputs(outputs, reference_outputs).items()
        }
        logits = next(iter(outputs.values()))
        report[f"{name}_probs_max_abs"] = max_abs(softmax(logits), softmax(reference_logits))
        report[f"{name}_top1_agreement"] = float(np.mean(logits.argmax(1) == reference_logits.argmax(1)))
        report[f"{name}_rowwise_max_abs"] = rowwise_consistency(engine, images, batch_sizes)
    return report


def failures(report: dict[str, float], tolerance: float) -> dict[str, float]:
    """Return the output differences over ``tolerance`` (NaN counts as over)."""
    return {
        key: value
        for key, value in report.items()
        if key.endswith("_max_abs") and "_probs_" not in key and not value <= tolerance
    }
