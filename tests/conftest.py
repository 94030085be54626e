"""Shared fixtures: a small model trained and exported once per session, and a running service."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.launcher import ServiceProcess

# test_resnet is timm's smallest ResNet (0.4 M parameters): a few seconds per epoch on 2 cores.
TINY_OVERRIDES = [
    "model.name=test_resnet",
    "train.epochs=2",
    "data.image_size=16",
    "train.log_interval=100",
]


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder from training test_resnet on digits for 2 epochs."""
    from training.config import load_config
    from training.train import train

    output_dir = tmp_path_factory.mktemp("runs")
    config = load_config(Path("configs/digits.yaml"), [*TINY_OVERRIDES, f"train.output_dir={output_dir}"])
    return train(config)


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory) -> Path:
    from training.export import export

    return export(tiny_run / "best.pt", tmp_path_factory.mktemp("exports") / "digits", version="1")


@pytest.fixture(scope="session")
def digit_pngs(tmp_path_factory) -> tuple[list[Path], list[int]]:
    """Forty real digit scans written as PNG files, with their labels."""
    from sklearn.datasets import load_digits

    from training.data.datasets import digits_to_uint8

    digits = load_digits()
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for index, pixels in enumerate(digits_to_uint8(digits.images[:40])):
        path = folder / f"digit_{index:02d}.png"
        path.write_bytes(png_bytes(pixels))
        paths.append(path)
    return paths, [int(t) for t in digits.target[:40]]


@pytest.fixture(scope="session")
def service(tiny_export, tmp_path_factory):
    """The real BentoML service on a free 127.0.0.1 port, serving the tiny export."""
    log_path = tmp_path_factory.mktemp("service") / "service.log"
    with ServiceProcess(tiny_export, log_path=log_path) as running:
        yield running
