import json
import shutil
import subprocess
import sys

import pytest

from serving.manifest import load_manifest
from serving.verify import GoldenMismatchError, verify_export


@pytest.fixture
def export_copy(tiny_export, tmp_path):
    target = tmp_path / "digits" / "1"
    shutil.copytree(tiny_export, target)
    return target


def run_verify(path):
    return subprocess.run(
        [sys.executable, "-m", "serving.verify", str(path)], capture_output=True, text=True, timeout=120
    )


def test_clean_export_passes(export_copy):
    result = run_verify(export_copy.parent)
    assert result.returncode == 0, result.stderr
    assert "OK digits version 1" in result.stdout


@pytest.mark.parametrize("name", ["model.onnx", "model.pt", "golden/001.png"])
def test_tampered_file_named(export_copy, name):
    path = export_copy / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run_verify(export_copy)
    assert result.returncode == 1
    assert name in result.stderr
    assert "sha256" in result.stderr


def test_missing_file_named(export_copy):
    (export_copy / "model.pt").unlink()
    result = run_verify(export_copy)
    assert result.returncode == 1
    assert "model.pt" in result.stderr


def test_golden_mismatch_named(export_copy):
    manifest_path = export_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["golden"][2]["scores"][0] -= 0.05
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(GoldenMismatchError, match="golden/002.png"):
        verify_export(export_copy)


def test_golden_top1_mismatch_named(export_copy):
    manifest_path = export_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    sample = manifest["golden"][0]
    sample["class_ids"][0], sample["class_ids"][1] = sample["class_ids"][1], sample["class_ids"][0]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(GoldenMismatchError, match="golden/000.png: top-1"):
        verify_export(export_copy)
    assert load_manifest(export_copy).golden[0].class_ids[1] == manifest["golden"][0]["class_ids"][1]
