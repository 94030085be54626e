import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mask_tree import TINY_MASK_OVERRIDES, make_competition_tree

from serving.engine import OnnxSession, to_input_batch
from serving.manifest import Manifest, OutputContract, load_manifest
from serving.verify import verify_export
from training.config import load_config
from training.export import ExportError, export, load_model_from_checkpoint, sample_images
from training.export.wrappers import UInt8Input
from training.models import decode_classes
from training.train import train

THREE_HEAD_OVERRIDES = [*TINY_MASK_OVERRIDES, "model.heads=three"]
HEAD_OUTPUTS = {
    "classification": ["logits", "mask_logits", "gender_logits", "age_logits"],
    "regression": ["logits", "mask_logits", "gender_logits", "age"],
}
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=sorted(HEAD_OUTPUTS))
def heads_export(request, tmp_path_factory):
    """Train a three-head model and export it; return (export folder, best.pt, age head)."""
    root = tmp_path_factory.mktemp("competition")
    train_dir = make_competition_tree(root)
    runs = tmp_path_factory.mktemp("runs")
    overrides = [
        f"data.root={train_dir}",
        *THREE_HEAD_OVERRIDES,
        f"train.output_dir={runs}",
        f"model.age_head={request.param}",
    ]
    run_dir = train(load_config("configs/mask.yaml", overrides))
    checkpoint = run_dir / "best.pt"
    folder = export(checkpoint, tmp_path_factory.mktemp("exports") / "mask", version="1", tolerance=TOLERANCE)
    return folder, checkpoint, request.param


def test_export_heads_graph_outputs(heads_export):
    folder, _, age_head = heads_export
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == HEAD_OUTPUTS[age_head]


def test_export_heads_manifest_outputs(heads_export):
    folder, _, age_head = heads_export
    output = load_manifest(folder).output
    assert output.heads == "three"
    assert output.names == HEAD_OUTPUTS[age_head]
    assert "log_softmax" in output.combination
    assert (output.age_cutoffs == [30, 60]) == (age_head == "regression")


@pytest.mark.parametrize("engine", ["onnx", "torchscript"])
def test_export_heads_parity_every_output(heads_export, engine):
    folder, _, age_head = heads_export
    parity = load_manifest(folder).parity
    for name in HEAD_OUTPUTS[age_head]:
        assert parity[f"{engine}_{name}_max_abs"] <= TOLERANCE, name
        for batch_size in (1, 3, 8):
            assert parity[f"{engine}_batch{batch_size}_{name}_max_abs"] <= TOLERANCE, (name, batch_size)
    assert parity[f"{engine}_rowwise_max_abs"] <= TOLERANCE
    assert parity[f"{engine}_top1_agreement"] == 1.0


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_export_heads_argmax_matches_eager(heads_export, batch_size):
    folder, checkpoint, _ = heads_export
    model, config, _, _ = load_model_from_checkpoint(checkpoint)
    images = sample_images(config, 8)[:batch_size]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images})
    with torch.no_grad():
        eager = UInt8Input(model, config.data.mean, config.data.std)(torch.from_numpy(images))
    assert logits.shape == (batch_size, 18)
    assert logits.argmax(axis=1).tolist() == decode_classes(eager).tolist()


def test_export_heads_torchscript_tuple(heads_export):
    folder, checkpoint, _ = heads_export
    _, config, _, _ = load_model_from_checkpoint(checkpoint)
    images = torch.from_numpy(sample_images(config, 8)[:3])
    outputs = torch.jit.load(str(folder / "model.pt"))(images)
    assert len(outputs) == 4
    assert outputs[0].shape == (3, 18)


def test_export_heads_session_reads_logits(heads_export):
    folder, checkpoint, _ = heads_export
    _, config, _, _ = load_model_from_checkpoint(checkpoint)
    session = OnnxSession(folder, providers=["CPUExecutionProvider"])
    contract = session.manifest.input
    logits = session.infer(to_input_batch(sample_images(config, 8)[:3], contract))
    assert logits.shape == (3, 18)


def test_export_heads_torchscript_backend_logits(heads_export):
    from serving.torchscript_backend import TorchScriptSession

    folder, checkpoint, _ = heads_export
    _, config, _, _ = load_model_from_checkpoint(checkpoint)
    onnx = OnnxSession(folder, providers=["CPUExecutionProvider"])
    batch = to_input_batch(sample_images(config, 8)[:3], onnx.manifest.input)
    logits = TorchScriptSession(folder).infer(batch)
    assert logits.shape == (3, 18)
    np.testing.assert_allclose(logits, onnx.infer(batch), atol=1e-4)


def test_export_heads_verify_passes(heads_export):
    folder, _, _ = heads_export
    assert verify_export(folder, providers=["CPUExecutionProvider"]).name == "mask"


def test_export_heads_model_card(heads_export):
    folder, _, age_head = heads_export
    card = (folder / "model_card.md").read_text(encoding="utf-8")
    assert "- Heads: three" in card
    for name in HEAD_OUTPUTS[age_head][1:]:
        assert f"`{name}`" in card


def test_export_heads_tolerance_failure(heads_export, tmp_path):
    _, checkpoint, _ = heads_export
    with pytest.raises(ExportError, match="within tolerance") as caught:
        export(checkpoint, tmp_path / "mask", version="1", tolerance=-1.0, exporter="torchscript")
    assert "onnx_mask_logits_max_abs" in str(caught.value)
    assert list((tmp_path / "mask").iterdir()) == []


def test_manifest_without_heads_loads_single(heads_export):
    folder, _, _ = heads_export
    data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    data["output"] = {"name": "logits", "kind": "logits"}
    data["schema_version"] = 2
    manifest = Manifest.model_validate(data)
    assert manifest.output == OutputContract()
    assert manifest.output.names == ["logits"]


def test_export_heads_first_output_is_log_joint(heads_export):
    folder, checkpoint, _ = heads_export
    _, config, _, _ = load_model_from_checkpoint(checkpoint)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": sample_images(config, 8)})
    assert np.allclose(np.exp(logits).sum(axis=1), 1.0, atol=1e-5)
