"""Helpers shared by the benchmark scripts: a random-weight checkpoint and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_checkpoint(
    model_name: str, image_size: int, num_classes: int, color_mode: str, workdir: Path
) -> Path:
    """Write a checkpoint of a freshly initialized model, for speed measurements only."""
    from training.checkpoint import save_checkpoint
    from training.config import load_config
    from training.models import create_model

    mean = [0.5] if color_mode == "L" else [0.485, 0.456, 0.406]
    std = [0.5] if color_mode == "L" else [0.229, 0.224, 0.225]
    config = load_config(
        REPO / "configs" / "digits.yaml",
        [f"model.name={model_name}", f"data.image_size={image_size}", f"data.color_mode={color_mode}",
         f"data.mean={mean}", f"data.std={std}", f"name={model_name}"],
    )  # fmt: skip
    model = create_model(config.model, num_classes, 1 if color_mode == "L" else 3)
    path = workdir / f"{model_name}_{image_size}.pt"
    state = {
        "model": model.state_dict(),
        "config": config.model_dump(mode="json"),
        "class_names": [str(i) for i in range(num_classes)],
    }
    save_checkpoint(state, path)
    return path


def machine_line() -> str:
    return (
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}."
    )


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section that starts with ``heading`` in BENCHMARKS.md, keeping the others."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if end == -1 else text[end:])
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
