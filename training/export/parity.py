"""Parity between eager PyTorch and the exported engines, on real images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# An engine maps a uint8 batch [N, H, W, C] to float32 logits [N, num_classes].
Engine = Callable[[np.ndarray], np.ndarray]

PARITY_BATCH_SIZES = (1, 3, 8)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def run_batched(engine: Engine, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([engine(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def rowwise_consistency(engine: Engine, images: np.ndarray, batch_sizes: tuple[int, ...]) -> float:
    """Return the largest difference between a row of a batch and the same image run alone.

    A batch axis that was specialized or mixed across rows at export shows up here, or as a wrong
    output shape, which raises ValueError.
    """
    largest = max(batch_sizes)
    singles = np.concatenate([engine(images[i : i + 1]) for i in range(largest)])
    worst = 0.0
    for batch_size in batch_sizes:
        batch = engine(images[:batch_size])
        if batch.shape[0] != batch_size:
            raise ValueError(f"batch of {batch_size} images returned {batch.shape[0]} rows")
        worst = max(worst, max_abs(batch, singles[:batch_size]))
    return worst


def measure_parity(
    reference: Engine,
    engines: dict[str, Engine],
    images: np.ndarray,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
) -> dict[str, float]:
    """Compare each engine with the reference on ``images``; flat keys ``<engine>_<measure>``."""
    if len(images) < max(batch_sizes):
        raise ValueError(f"parity needs at least {max(batch_sizes)} images, got {len(images)}")
    reference_logits = run_batched(reference, images, max(batch_sizes))
    reference_probs = softmax(reference_logits)
    report: dict[str, float] = {}
    for name, engine in engines.items():
        for batch_size in batch_sizes:
            logits = engine(images[:batch_size])
            report[f"{name}_batch{batch_size}_logits_max_abs"] = max_abs(
                logits, reference_logits[:batch_size]
            )
        logits = run_batched(engine, images, max(batch_sizes))
        report[f"{name}_logits_max_abs"] = max_abs(logits, reference_logits)
        report[f"{name}_probs_max_abs"] = max_abs(softmax(logits), reference_probs)
        report[f"{name}_top1_agreement"] = float(np.mean(logits.argmax(1) == reference_logits.argmax(1)))
        report[f"{name}_rowwise_max_abs"] = rowwise_consistency(engine, images, batch_sizes)
    return report


def failures(report: dict[str, float], tolerance: float) -> dict[str, float]:
    """Return the logit differences over ``tolerance`` (NaN counts as over)."""
    return {
        key: value
        for key, value in report.items()
        if key.endswith("_max_abs") and "_probs_" not in key and not value <= tolerance
    }
