"""Execution providers, session options, REQUIRE_GPU and the TorchScript backend.

The CUDA paths are checked for their configuration on the CPU. Where a GPU is the missing part, the
driver's device count is replaced; onnxruntime itself runs for real and falls back to the CPU, which
is the silent fallback that REQUIRE_GPU=1 must catch. The tests marked ``gpu`` run only where the
driver reports a GPU: they are the prepared check for a GPU machine
(``pytest tests/test_providers.py -k gpu``).
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from serving import engine, providers
from serving.engine import OnnxSession, to_input_batch
from serving.launcher import ServiceProcess
from serving.providers import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    ExecutionSettings,
    GpuRequiredError,
    check_gpu_active,
    check_gpu_prerequisites,
    cpu_cores,
    device_id,
    intra_op_threads,
    model_workers,
    provider_options,
    resolve_providers,
    session_options,
    uses_io_binding,
    warmup_batch_sizes,
)

HAS_GPU = providers.cuda_device_count() > 0
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU; this is the check for a GPU machine")
BOTH = [CUDA_PROVIDER, CPU_PROVIDER]


def random_batch(session, count: int = 3) -> np.ndarray:
    contract = session.manifest.input
    shape = (count, contract.height, contract.width, contract.image_spec.channels)
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    return to_input_batch(pixels, contract)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", None),
        ("cpu", [CPU_PROVIDER]),
        ("cuda,cpu", BOTH),
        ("CUDA, CPU", BOTH),
        ("CUDAExecutionProvider,CPUExecutionProvider", BOTH),
        ("tensorrt,cuda,cpu", ["TensorrtExecutionProvider", *BOTH]),
    ],
)
def test_providers_setting_parsed(value, expected):
    assert ExecutionSettings.from_env({"ORT_PROVIDERS": value}).providers == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ORT_PROVIDERS": "gpu"}, "ORT_PROVIDERS='gpu': Value error, unknown provider 'gpu'"),
        ({"ORT_PROVIDERS": ","}, "lists no provider"),
        ({"REQUIRE_GPU": "maybe"}, "REQUIRE_GPU='maybe'"),
        ({"ORT_INTRA_OP_THREADS": "0"}, "ORT_INTRA_OP_THREADS='0'"),
        ({"ORT_CUDNN_CONV_ALGO_SEARCH": "fastest"}, "ORT_CUDNN_CONV_ALGO_SEARCH='fastest'"),
        ({"WARMUP_BATCH_SIZES": "some"}, "WARMUP_BATCH_SIZES='some'"),
    ],
)
def test_execution_setting_invalid(environ, message):
    with pytest.raises(ValueError, match="invalid execution setting") as caught:
        ExecutionSettings.from_env(environ)
    assert message in str(caught.value)


def test_cudnn_search_case_insensitive():
    settings = ExecutionSettings.from_env({"ORT_CUDNN_CONV_ALGO_SEARCH": "heuristic"})
    assert settings.cudnn_conv_algo_search == "HEURISTIC"


@pytest.mark.parametrize(
    ("setting", "available", "gpu_count", "expected"),
    [
        (None, BOTH, 1, BOTH),
        (None, BOTH, 0, [CPU_PROVIDER]),
        (None, [CPU_PROVIDER], 2, [CPU_PROVIDER]),
        ("cpu", BOTH, 1, [CPU_PROVIDER]),
        ("cuda,cpu", [CPU_PROVIDER], 0, BOTH),
    ],
)
def test_resolve_providers(setting, available, gpu_count, expected):
    settings = ExecutionSettings.from_env({"ORT_PROVIDERS": setting} if setting else {})
    assert resolve_providers(settings, available, gpu_count) == expected


@pytest.mark.parametrize(
    ("environ", "available", "gpu_count", "reason"),
    [
        ({"REQUIRE_GPU": "1", "ORT_PROVIDERS": "cpu"}, BOTH, 1, "does not list CUDAExecutionProvider"),
        ({"REQUIRE_GPU": "1"}, [CPU_PROVIDER], 1, "install onnxruntime-gpu"),
        ({"REQUIRE_GPU": "1"}, BOTH, 0, "the CUDA driver reports no GPU"),
    ],
)
def test_gpu_prerequisites_rejected(environ, available, gpu_count, reason):
    with pytest.raises(GpuRequiredError, match=reason):
        check_gpu_prerequisites(ExecutionSettings.from_env(environ), available, gpu_count)


@pytest.mark.parametrize(
    ("environ", "gpu_count"), [({"REQUIRE_GPU": "1"}, 1), ({}, 0), ({"REQUIRE_GPU": "0"}, 0)]
)
def test_gpu_prerequisites_met(environ, gpu_count):
    check_gpu_prerequisites(ExecutionSettings.from_env(environ), BOTH, gpu_count)


@pytest.mark.parametrize(("active", "rejected"), [([CPU_PROVIDER], True), ([], True), (BOTH, False)])
def test_gpu_active_check(active, rejected):
    settings = ExecutionSettings(require_gpu=True)
    if rejected:
        with pytest.raises(GpuRequiredError, match="could not start the CUDA provider"):
            check_gpu_active(settings, active)
    else:
        check_gpu_active(settings, active)


@pytest.mark.parametrize(
    ("setting", "workers", "cores", "expected"),
    [(None, 1, 8, 8), (None, 3, 8, 2), (None, 4, 2, 1), (5, 4, 2, 5)],
)
def test_intra_op_threads_split_cores(setting, workers, cores, expected):
    assert intra_op_threads(ExecutionSettings(intra_op_threads=setting), workers, cores) == expected


def test_session_options_applied():
    import onnxruntime as ort

    settings = ExecutionSettings.from_env({"ORT_INTER_OP_THREADS": "2", "ORT_GRAPH_OPTIMIZATION": "basic"})
    options = session_options(settings, workers=2, cores=6)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


@pytest.mark.parametrize(
    ("cpu_max", "expected"), [("max 100000", 64), ("150000 100000", 1), ("400000 100000", 4)]
)
def test_cpu_cores_cgroup_quota(tmp_path, monkeypatch, cpu_max, expected):
    cpu_max_file = tmp_path / "cpu.max"
    cpu_max_file.write_text(cpu_max + "\n")
    monkeypatch.setattr(providers, "_CGROUP_CPU_MAX", cpu_max_file)
    monkeypatch.setattr(providers.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert cpu_cores() == expected


@pytest.mark.parametrize("search", ["EXHAUSTIVE", "HEURISTIC", "DEFAULT"])
def test_cuda_provider_options(search):
    settings = ExecutionSettings(cudnn_conv_algo_search=search)
    configured = provider_options(settings, BOTH, device=1)
    assert configured[0] == (
        CUDA_PROVIDER,
        {"device_id": "1", "cudnn_conv_algo_search": search, "do_copy_in_default_stream": "1"},
    )
    assert configured[1] == CPU_PROVIDER


@pytest.mark.parametrize(
    ("setting", "worker_index", "gpu_count", "expected"),
    [(None, 1, 2, 0), (None, 2, 2, 1), (None, 3, 2, 0), (3, 1, 4, 3)],
)
def test_device_id_per_worker(setting, worker_index, gpu_count, expected):
    assert device_id(ExecutionSettings(device_id=setting), worker_index, gpu_count) == expected


@pytest.mark.parametrize(
    ("setting", "requested", "gpu_count", "expected"),
    [(None, BOTH, 4, 4), (None, [CPU_PROVIDER], 4, 1), (None, BOTH, 0, 1), (2, [CPU_PROVIDER], 0, 2)],
)
def test_model_workers_one_per_gpu(setting, requested, gpu_count, expected):
    assert model_workers(ExecutionSettings(model_workers=setting), requested, gpu_count) == expected


@pytest.mark.parametrize(
    ("setting", "active", "expected"),
    [(None, BOTH, True), (None, [CPU_PROVIDER], False), (True, [CPU_PROVIDER], True)],
)
def test_io_binding_default(setting, active, expected):
    assert uses_io_binding(ExecutionSettings(io_binding=setting), active) is expected


@pytest.mark.parametrize(
    ("setting", "active", "expected"),
    [
        (None, BOTH, [1, 2, 3, 4, 5]),
        (None, [CPU_PROVIDER], [1, 5]),
        ("all", [CPU_PROVIDER], [1, 2, 3, 4, 5]),
        ("ends", BOTH, [1, 5]),
    ],
)
def test_warmup_batch_sizes(setting, active, expected):
    assert warmup_batch_sizes(ExecutionSettings(warmup_batch_sizes=setting), 5, active) == expected


def test_io_binding_matches_plain_run(tiny_export):
    plain = OnnxSession(tiny_export, execution=ExecutionSettings(io_binding=False))
    bound = OnnxSession(tiny_export, execution=ExecutionSettings(io_binding=True))
    batch = random_batch(plain)
    assert bound.io_binding is True
    np.testing.assert_array_equal(bound.infer(batch), plain.infer(batch))


def test_session_describes_threads(tiny_export):
    session = OnnxSession(tiny_export, execution=ExecutionSettings(intra_op_threads=1), workers=2)
    described = session.describe()
    assert described["providers"] == [CPU_PROVIDER]
    assert described["intra_op_threads"] == 1
    assert described["io_binding"] is False


def test_require_gpu_catches_silent_fallback(tiny_export, monkeypatch):
    # Only the GPU is missing: the driver reports 1 GPU, and onnxruntime falls back to the CPU.
    monkeypatch.setattr(engine, "cuda_device_count", lambda: 1)
    if CUDA_PROVIDER not in providers.available_providers():
        pytest.skip("this onnxruntime has no CUDA provider to fall back from")
    with pytest.raises(GpuRequiredError, match="runs on CPUExecutionProvider"):
        OnnxSession(tiny_export, execution=ExecutionSettings(require_gpu=True))


def test_cuda_fallback_logged(tiny_export, monkeypatch, caplog):
    monkeypatch.setattr(engine, "cuda_device_count", lambda: 1)
    if CUDA_PROVIDER not in providers.available_providers() or HAS_GPU:
        pytest.skip("needs onnxruntime-gpu on a machine without a usable GPU")
    session = OnnxSession(tiny_export, execution=ExecutionSettings())
    assert session.providers == [CPU_PROVIDER]
    assert "fell back to CPUExecutionProvider" in caplog.text


def test_service_refuses_without_gpu(tiny_export, tmp_path):
    if HAS_GPU:
        pytest.skip("this machine has a GPU, so REQUIRE_GPU=1 is met")
    service = ServiceProcess(tiny_export, log_path=tmp_path / "service.log", env={"REQUIRE_GPU": "1"})
    service.start()
    try:
        exit_code = service.process.wait(timeout=120)
    finally:
        service.stop()
    log = service.log_path.read_text()
    assert exit_code != 0
    assert "GpuRequiredError" in log
    assert "REQUIRE_GPU=1 but the CUDA driver reports no GPU" in log


def test_torchscript_backend_missing_torch(tiny_export):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from serving.torchscript_backend import TorchScriptSession\n"
        f"TorchScriptSession({str(tiny_export)!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "BACKEND=torchscript needs torch" in result.stderr


def test_torchscript_session_matches_onnx(tiny_export):
    from serving.torchscript_backend import TorchScriptSession

    onnx = OnnxSession(tiny_export)
    torchscript = TorchScriptSession(tiny_export)
    batch = random_batch(onnx, count=5)
    np.testing.assert_allclose(torchscript.infer(batch), onnx.infer(batch), atol=1e-4)
    assert torchscript.describe()["backend"] == "torchscript"


def test_torchscript_service_same_answers(tiny_export, digit_pngs, tmp_path):
    paths, _ = digit_pngs
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in paths[:8]]
    offline = OnnxSession(tiny_export)
    env = {"BACKEND": "torchscript", "SHUTDOWN_DELAY_S": "0"}
    with ServiceProcess(tiny_export, env=env, log_path=tmp_path / "service.log") as service:
        response = httpx.post(f"{service.url}/predict", files=files, timeout=60)
        info = httpx.get(f"{service.url}/model", timeout=10).json()
        metadata = httpx.get(f"{service.url}/v2/models/{offline.manifest.name}", timeout=10).json()
    from serving.engine import Postprocessor
    from serving.preprocess import load_array

    postprocessor = Postprocessor(offline.manifest)
    arrays = [load_array(path, postprocessor.spec) for path in paths[:8]]
    expected = [row[0].class_id for row in postprocessor.top_k(offline.infer(postprocessor.to_batch(arrays)))]
    assert response.status_code == 200, response.text
    assert [p["class_id"] for p in response.json()["predictions"]] == expected
    assert info["execution"]["backend"] == "torchscript"
    assert info["execution_providers"] == ["torch-cpu"]
    assert metadata["platform"] == "pytorch_libtorch"


@gpu
def test_gpu_session_on_cuda(tiny_export):
    session = OnnxSession(tiny_export, execution=ExecutionSettings(require_gpu=True))
    cpu = OnnxSession(tiny_export, execution=ExecutionSettings(providers=[CPU_PROVIDER]))
    batch = random_batch(session, count=4)
    described = session.describe()
    assert session.providers[0] == CUDA_PROVIDER
    assert described["io_binding"] is True
    assert described["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    np.testing.assert_allclose(session.infer(batch), cpu.infer(batch), atol=1e-3)


@gpu
@pytest.mark.parametrize("search", ["HEURISTIC", "DEFAULT"])
def test_gpu_cudnn_search_applied(tiny_export, search):
    session = OnnxSession(
        tiny_export, execution=ExecutionSettings(require_gpu=True, cudnn_conv_algo_search=search)
    )
    assert session.describe()["cudnn_conv_algo_search"] == search


@gpu
def test_gpu_warm_up_every_batch_size(tiny_export):
    session = OnnxSession(tiny_export, execution=ExecutionSettings(require_gpu=True))
    sizes = warmup_batch_sizes(session.execution, 8, session.providers)
    started = time.perf_counter()
    session.warm_up(sizes)
    print(f"warm-up of batch sizes {sizes} on {session.providers[0]}: {time.perf_counter() - started:.2f} s")
    assert sizes == list(range(1, 9))


@gpu
def test_gpu_service_requires_cuda(tiny_export, digit_pngs, tmp_path):
    paths, _ = digit_pngs
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in paths[:4]]
    env = {"REQUIRE_GPU": "1", "SHUTDOWN_DELAY_S": "0", "MAX_BATCH_SIZE": "8"}
    with ServiceProcess(tiny_export, env=env, log_path=tmp_path / "service.log") as service:
        response = httpx.post(f"{service.url}/predict", files=files, timeout=60)
        info = httpx.get(f"{service.url}/model", timeout=10).json()
    assert response.status_code == 200, response.text
    assert info["execution"]["providers"][0] == CUDA_PROVIDER
    assert "warmed up batch sizes 1..8" in service.log_path.read_text()
