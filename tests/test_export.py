import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from serving.engine import OnnxClassifier
from serving.manifest import load_manifest, sha256_file
from training.export import ExportError, export, load_model_from_checkpoint, sample_images


def test_manifest_contents(tiny_export):
    manifest = load_manifest(tiny_export)
    assert manifest.class_names == [str(i) for i in range(10)]
    assert manifest.input.format == "uint8_nhwc"
    assert (manifest.input.height, manifest.input.width) == (16, 16)
    assert manifest.input.color_mode == "L"
    assert manifest.opset >= 17
    assert {"torch", "onnxruntime", "timm"} <= set(manifest.versions)


def test_manifest_hashes_match_files(tiny_export):
    manifest = load_manifest(tiny_export)
    assert set(manifest.files) == {"model.onnx", "model.pt"}
    for name, digest in manifest.files.items():
        assert sha256_file(tiny_export / name) == digest


def test_parity_recorded_under_tolerance(tiny_export):
    parity = json.loads((tiny_export / "manifest.json").read_text())["parity"]
    assert set(parity) == {"onnx_batch1", "onnx_batch3", "torchscript_batch1", "torchscript_batch3"}
    assert all(value <= 1e-4 for value in parity.values())


@pytest.mark.parametrize("batch_size", [1, 2, 5, 8])
def test_onnx_batch_axis_is_dynamic(tiny_export, batch_size):
    session = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (batch_size, 16, 16, 1), dtype=np.uint8)
    (logits,) = session.run(None, {"images": images})
    assert logits.shape == (batch_size, 10)


def test_onnx_matches_eager_on_real_images(tiny_run, tiny_export):
    model, config, _, _ = load_model_from_checkpoint(tiny_run / "best.pt")
    images = sample_images(config, 6)
    mean = torch.tensor(config.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(config.data.std).view(1, -1, 1, 1)
    normalized = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.no_grad():
        eager = model(normalized).numpy()
    classifier = OnnxClassifier(tiny_export)
    onnx_logits = classifier.session.infer(classifier.postprocessor.to_batch(list(images)))
    assert np.abs(eager - onnx_logits).max() < 1e-4


def test_tolerance_failure_leaves_no_folder(tiny_run, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(ExportError, match="parity check failed") as info:
        export(tiny_run / "best.pt", out, tolerance=1e-12)
    assert str(out) in str(info.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
