"""Check an export folder: every file against its sha256, and the golden images through the model.

    python -m serving.verify exports/digits/1

Exits 0 only if every check passed; otherwise prints what failed and exits 1. The golden images go
through the serving path (``serving.preprocess`` decode and resize, the manifest's batch layout,
onnxruntime), so a drift anywhere on that path fails here before it reaches clients.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from serving.manifest import Manifest, load_manifest, resolve_model_dir, verify_files

logger = logging.getLogger(__name__)


class GoldenMismatchError(ValueError):
    """Raised when a golden image's output differs from the one recorded at export."""


def check_golden(model_dir: str | Path, manifest: Manifest, infer: Callable[[np.ndarray], np.ndarray]) -> int:
    """Run each golden image through decode, resize and ``infer``; return how many were checked.

    ``infer`` takes a batch in the manifest's input layout and returns logits. A golden image passes
    when its top-1 class equals the recorded one and the probability of every recorded top-5 class
    is within ``manifest.golden_tolerance`` of the recorded score. Comparing by class, not by rank,
    keeps near-equal low scores that swap order on another execution provider from failing.
    """
    from serving.engine import Postprocessor, softmax
    from serving.preprocess import load_array

    model_dir = resolve_model_dir(model_dir)
    postprocessor = Postprocessor(manifest)
    for sample in manifest.golden:
        path = model_dir / sample.file
        array = load_array(path, postprocessor.spec)
        probabilities = softmax(infer(postprocessor.to_batch([array])))[0]
        top1 = int(np.argmax(probabilities))
        if top1 != sample.class_ids[0]:
            raise GoldenMismatchError(
                f"{sample.file}: top-1 class is {top1}, the export recorded {sample.class_ids[0]}"
            )
        for class_id, expected in zip(sample.class_ids, sample.scores, strict=True):
            difference = abs(float(probabilities[class_id]) - expected)
            if difference > manifest.golden_tolerance:
                raise GoldenMismatchError(
                    f"{sample.file}: probability of class {class_id} is {probabilities[class_id]:.6f}, "
                    f"the export recorded {expected:.6f} (difference {difference:.2e} over "
                    f"{manifest.golden_tolerance:g})"
                )
    return len(manifest.golden)


def verify_export(model_dir: str | Path, providers: list[str] | None = None) -> Manifest:
    """Check hashes, then golden images with onnxruntime; raise on the first failure."""
    from serving.engine import OnnxSession

    model_dir = resolve_model_dir(model_dir)
    manifest = load_manifest(model_dir)
    verify_files(model_dir, manifest)
    session = OnnxSession(model_dir, providers=providers, verify=False)
    checked = check_golden(model_dir, manifest, session.infer)
    logger.info(
        "%s: %d files match their sha256, %d golden images match", model_dir, len(manifest.files), checked
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.verify", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path, help="export folder (a version folder, or its parent)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = verify_export(args.model_dir)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("verification failed: %s", exc)
        return 1
    print(f"OK {manifest.name} version {manifest.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
