"""Golden samples: a few encoded validation images with the outputs the export produced for them.

The service and ``python -m serving.verify`` decode these files with the serving path and compare
their outputs with the recorded ones, which catches a changed decoder, resize rule or graph.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from serving.manifest import GoldenSample
from training.data.datasets import Sample
from training.export.parity import Engine, softmax

GOLDEN_DIR = "golden"
TOP_K = 5


def encoded_bytes(sample: Sample) -> tuple[bytes, str]:
    """Return the sample's original file bytes and suffix, or a PNG encoding of in-memory pixels."""
    if sample.path is not None:
        return sample.path.read_bytes(), sample.path.suffix.lower()
    buffer = io.BytesIO()
    sample.load().save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


def write_golden(samples: list[Sample], out_dir: Path, engine: Engine, load: callable) -> list[GoldenSample]:
    """Write each sample under ``out_dir/golden/`` and record its top-k from ``engine``.

    ``load(path)`` must return the uint8 HWC array the service would compute for that file.
    """
    folder = out_dir / GOLDEN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    golden = []
    for index, sample in enumerate(samples):
        data, suffix = encoded_bytes(sample)
        relative = f"{GOLDEN_DIR}/{index:03d}{suffix}"
        (out_dir / relative).write_bytes(data)
        probabilities = softmax(engine(np.stack([load(out_dir / relative)])))[0]
        top = np.argsort(-probabilities, kind="stable")[:TOP_K]
        golden.append(
            GoldenSample(
                file=relative,
                class_ids=[int(i) for i in top],
                scores=[float(probabilities[i]) for i in top],
            )
        )
    return golden
