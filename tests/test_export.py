import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from serving.engine import OnnxClassifier
from serving.manifest import load_manifest, resolve_model_dir, sha256_file
from serving.preprocess import load_array
from training.export import ExportError, ExportOptions, export, load_model_from_checkpoint, sample_images
from training.export.torchscript_export import TracerWarningError, export_torchscript


def test_manifest_contents(tiny_export):
    manifest = load_manifest(tiny_export)
    assert manifest.name == "digits"
    assert manifest.version == "1"
    assert manifest.class_names == [str(i) for i in range(10)]
    assert manifest.exporter in ("dynamo", "torchscript")
    assert manifest.torchscript_method in ("script", "trace")
    assert manifest.opset >= 17
    assert {"torch", "onnxruntime", "timm"} <= set(manifest.versions)
    assert "macro_f1" in manifest.metrics
    assert len(manifest.golden) == 4


def test_uint8_contract(tiny_export):
    manifest = load_manifest(tiny_export)
    assert manifest.input.format == "uint8_nhwc"
    assert (manifest.input.height, manifest.input.width, manifest.input.color_mode) == (16, 16, "L")
    session = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    assert graph_input.name == "images"
    assert graph_input.type == "tensor(uint8)"
    assert graph_input.shape[1:] == [16, 16, 1]


def test_hashes_cover_every_artifact(tiny_export):
    manifest = load_manifest(tiny_export)
    on_disk = {
        p.relative_to(tiny_export).as_posix()
        for p in tiny_export.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", "model_card.md")
    }
    assert set(manifest.files) == on_disk
    for name, digest in manifest.files.items():
        assert sha256_file(tiny_export / name) == digest


def test_model_card_written(tiny_export):
    card = (tiny_export / "model_card.md").read_text()
    assert "digits version 1" in card
    assert "macro_f1" in card


@pytest.mark.parametrize("engine", ["onnx", "torchscript"])
def test_parity_recorded_under_tolerance(tiny_export, engine):
    parity = json.loads((tiny_export / "manifest.json").read_text())["parity"]
    for batch_size in (1, 3, 8):
        assert parity[f"{engine}_batch{batch_size}_logits_max_abs"] <= 1e-4
    assert parity[f"{engine}_logits_max_abs"] <= 1e-4
    assert parity[f"{engine}_rowwise_max_abs"] <= 1e-4
    assert parity[f"{engine}_top1_agreement"] == 1.0


@pytest.mark.parametrize("batch_size", [1, 2, 5, 8])
def test_onnx_batch_axis_is_dynamic(tiny_export, batch_size):
    session = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (batch_size, 16, 16, 1), dtype=np.uint8)
    (logits,) = session.run(None, {"images": images})
    assert logits.shape == (batch_size, 10)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_torchscript_batch_axis_is_dynamic(tiny_export, batch_size):
    module = torch.jit.load(str(tiny_export / "model.pt"))
    images = torch.randint(0, 256, (batch_size, 16, 16, 1), dtype=torch.uint8)
    with torch.no_grad():
        assert module(images).shape == (batch_size, 10)


def test_onnx_matches_eager_on_real_images(tiny_run, tiny_export):
    model, config, _, _ = load_model_from_checkpoint(tiny_run / "best.pt")
    images = sample_images(config, 8)
    mean = torch.tensor(config.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(config.data.std).view(1, -1, 1, 1)
    normalized = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.no_grad():
        eager = model(normalized).numpy()
    classifier = OnnxClassifier(tiny_export)
    onnx_logits = classifier.session.infer(classifier.postprocessor.to_batch(list(images)))
    assert np.abs(eager - onnx_logits).max() < 1e-4


def test_tolerance_failure_leaves_no_folder(tiny_run, tmp_path):
    root = tmp_path / "strict"
    with pytest.raises(ExportError, match="model.onnx") as info:
        export(tiny_run / "best.pt", root, tolerance=1e-12)
    assert "within tolerance" in str(info.value)
    assert list(root.iterdir()) == []


def test_versions_increment_and_resolve(tiny_run, tmp_path):
    root = tmp_path / "digits"
    first = export(tiny_run / "best.pt", root, exporter="torchscript")
    second = export(tiny_run / "best.pt", root, exporter="torchscript")
    assert (first.name, second.name) == ("1", "2")
    assert resolve_model_dir(root) == second
    assert load_manifest(second).exporter == "torchscript"
    with pytest.raises(ExportError, match="immutable"):
        export(tiny_run / "best.pt", root, version="2")


@pytest.mark.parametrize("version", ["latest", "0", "-3"])
def test_invalid_version_rejected(tiny_run, tmp_path, version):
    with pytest.raises(ExportError, match="positive integer"):
        export(tiny_run / "best.pt", tmp_path, version=version)


def test_float32_contract_matches_uint8(tiny_run, tiny_export, tmp_path, digit_pngs):
    float_dir = export(tiny_run / "best.pt", tmp_path, ExportOptions(input_format="float32_nchw"))
    session = ort.InferenceSession(str(float_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    paths, _ = digit_pngs
    uint8_model = OnnxClassifier(tiny_export)
    float_model = OnnxClassifier(float_dir)
    arrays = [load_array(p, uint8_model.spec) for p in paths[:8]]
    uint8_logits = uint8_model.session.infer(uint8_model.postprocessor.to_batch(arrays))
    float_logits = float_model.session.infer(float_model.postprocessor.to_batch(arrays))
    assert np.abs(uint8_logits - float_logits).max() < 1e-4


def test_int8_and_fp16_variants(tiny_run, tmp_path):
    folder = export(tiny_run / "best.pt", tmp_path, int8=True, fp16=True)
    manifest = load_manifest(folder)
    assert set(manifest.variants) == {"int8", "fp16"}
    int8, fp16 = manifest.variants["int8"], manifest.variants["fp16"]
    assert {"fp32_accuracy", "fp32_macro_f1", "int8_accuracy", "int8_macro_f1"} <= set(int8.metrics)
    assert {"fp32_macro_f1", "fp16_macro_f1"} <= set(fp16.metrics)
    assert fp16.parity["fp16_probs_max_abs"] <= fp16.tolerance
    for variant in (int8, fp16):
        assert manifest.files[variant.file] == sha256_file(folder / variant.file)
        classifier = OnnxClassifier(folder)
        assert classifier.session.session is not None
        session = ort.InferenceSession(str(folder / variant.file), providers=["CPUExecutionProvider"])
        images = np.zeros((3, 16, 16, 1), dtype=np.uint8)
        assert session.run(None, {"images": images})[0].shape == (3, 10)


class Unscriptable(nn.Module):
    """Variable arguments stop torch.jit.script; the branch on a tensor value makes the tracer warn."""

    def forward(self, images, *extra):
        values = images.float()
        if values.mean() > 1000:
            return values.flatten(1)[:, :2] * 0
        return values.flatten(1)[:, :2]


def test_tracer_warning_is_error(tmp_path):
    example = torch.randint(0, 256, (2, 4, 4, 1), dtype=torch.uint8)
    with pytest.raises(TracerWarningError, match="--allow-tracer-warnings"):
        export_torchscript(Unscriptable(), example, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


def test_tracer_warning_allowed_by_option(tmp_path):
    example = torch.randint(0, 256, (2, 4, 4, 1), dtype=torch.uint8)
    method = export_torchscript(Unscriptable(), example, tmp_path / "model.pt", allow_tracer_warnings=True)
    assert method == "trace"
    assert (tmp_path / "model.pt").is_file()


def test_export_cli_writes_version(tiny_run, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    command = [sys.executable, "-m", "training", "export", "--checkpoint", str(tiny_run / "best.pt")]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(out / "1")
    copy = tmp_path / "copy"
    shutil.copytree(out / "1", copy)
    assert load_manifest(copy).version == "1"
