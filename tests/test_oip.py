"""The Open Inference Protocol routes of the real service, driven with Triton's HTTP client."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from serving.engine import OnnxClassifier
from serving.launcher import ServiceProcess
from serving.preprocess import load_array

MAX_IMAGES = 6
LIMITS_ENV = {"MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES), "MAX_BATCH_SIZE": "4", "SHUTDOWN_DELAY_S": "0"}


@pytest.fixture(scope="module")
def oip_service(tiny_export, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("oip") / "service.log"
    with ServiceProcess(tiny_export, env=LIMITS_ENV, log_path=log_path) as running:
        yield running


@pytest.fixture(scope="module")
def client(oip_service):
    return triton.InferenceServerClient(oip_service.url.removeprefix("http://"), network_timeout=60.0)


@pytest.fixture(scope="module")
def offline(tiny_export):
    return OnnxClassifier(tiny_export)


@pytest.fixture(scope="module")
def model_name(offline):
    return offline.manifest.name


@pytest.fixture(scope="module")
def images(digit_pngs):
    paths, _ = digit_pngs
    return [path.read_bytes() for path in paths[:MAX_IMAGES]]


def bytes_input(images, binary: bool = True) -> triton.InferInput:
    """Encoded images as raw BYTES, or as base64 strings in JSON (JSON carries only text)."""
    tensor = triton.InferInput("image_bytes", [len(images)], "BYTES")
    elements = images if binary else [base64.b64encode(data).decode() for data in images]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def pixels_input(pixels: np.ndarray, datatype: str = "UINT8", binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("images", list(pixels.shape), datatype)
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def offline_logits(offline, images) -> np.ndarray:
    arrays = [load_array(data, offline.spec) for data in images]
    return offline.session.infer(offline.postprocessor.to_batch(arrays))


def infer_error(client, model_name, inputs, outputs=None) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model_name, inputs, outputs=outputs)
    return caught.value


def test_server_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()


def test_server_metadata(client):
    metadata = client.get_server_metadata()
    assert metadata["name"] == "image-classifier"
    assert "binary_tensor_data" in metadata["extensions"]
    assert "classification" in metadata["extensions"]


def test_model_metadata(client, offline, model_name):
    metadata = client.get_model_metadata(model_name)
    contract = offline.manifest.input
    inputs = {tensor["name"]: tensor for tensor in metadata["inputs"]}
    assert metadata["versions"] == [offline.manifest.version]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert inputs["images"] == {
        "name": "images",
        "datatype": "UINT8",
        "shape": [-1, contract.height, contract.width, contract.image_spec.channels],
    }
    assert inputs["image_bytes"]["datatype"] == "BYTES"
    assert [tensor["name"] for tensor in metadata["outputs"]] == ["logits", "probabilities"]


@pytest.mark.parametrize("version", ["", "1"])
def test_model_ready(client, model_name, version):
    assert client.is_model_ready(model_name, version)


@pytest.mark.parametrize(("name", "version"), [("no-such-model", ""), (None, "7")])
def test_unknown_model_404(client, model_name, name, version):
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata(name or model_name, version)
    assert caught.value.status() == "404"
    assert "not found" in caught.value.message() or "no version '7'" in caught.value.message()


def test_unknown_model_infer_404(client, images):
    error = infer_error(client, "no-such-model", [bytes_input(images[:1])])
    assert error.status() == "404"
    assert "this server serves" in error.message()


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_input_logits(client, offline, model_name, images, binary):
    outputs = [triton.InferRequestedOutput("logits", binary_data=binary)]
    result = client.infer(model_name, [bytes_input(images, binary)], outputs=outputs)
    logits = result.as_numpy("logits")
    expected = offline_logits(offline, images)
    assert logits.shape == (len(images), offline.manifest.num_classes)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_strings(client, offline, model_name, images, binary):
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)]
    result = client.infer(model_name, [bytes_input(images)], outputs=outputs)
    rows = result.as_numpy("probabilities")
    expected = offline.postprocessor.top_k(offline_logits(offline, images), k=3)
    assert rows.shape == (len(images), 3)
    for row, top in zip(rows, expected, strict=True):
        entries = [(value.decode() if isinstance(value, bytes) else value).split(":") for value in row]
        assert [int(index) for _, index, _ in entries] == [entry.class_id for entry in top]
        assert [label for _, _, label in entries] == [entry.label for entry in top]
        np.testing.assert_allclose(
            [float(score) for score, _, _ in entries], [e.score for e in top], atol=1e-5
        )


def test_default_outputs_all_binary(client, offline, model_name, images):
    result = client.infer(model_name, [bytes_input(images[:2])])
    probabilities = result.as_numpy("probabilities")
    assert {output["name"] for output in result.get_response()["outputs"]} == {"logits", "probabilities"}
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_tensor_input_logits(client, offline, model_name, images, binary):
    pixels = np.stack([load_array(data, offline.spec) for data in images])
    result = client.infer(
        model_name,
        [pixels_input(pixels, binary=binary)],
        outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
    )
    np.testing.assert_allclose(result.as_numpy("logits"), offline_logits(offline, images), atol=1e-4)


def test_request_id_echoed(client, model_name, images):
    result = client.infer(model_name, [bytes_input(images[:1])], request_id="request-42", model_version="1")
    assert result.get_response()["id"] == "request-42"
    assert result.get_response()["model_version"] == "1"


@pytest.mark.parametrize(
    ("shape", "datatype", "message"),
    [
        ((1, 16, 16, 1), "FP32", "must have datatype UINT8"),
        ((1, 15, 16, 1), "UINT8", "shape must be [1, 16, 16, 1]"),
        ((1, 16, 16, 3), "UINT8", "shape must be [1, 16, 16, 1]"),
        ((16, 16, 1), "UINT8", "invalid shape"),
    ],
)
def test_tensor_contract_400(client, offline, model_name, shape, datatype, message):
    contract = offline.manifest.input
    assert (contract.height, contract.width) == (16, 16), "the cases assume the 16x16 test export"
    pixels = np.zeros(shape, dtype=np.float32 if datatype == "FP32" else np.uint8)
    error = infer_error(client, model_name, [pixels_input(pixels, datatype)])
    assert error.status() == "400"
    assert message in error.message()


def post_infer(service, model_name, payload, **kwargs) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(f"{service.url}/v2/models/{model_name}/infer", content=body, timeout=60, **kwargs)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not valid JSON"),
        ({"inputs": []}, "inputs"),
        (
            {"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]},
            "unknown input",
        ),
        (
            {"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES", "data": ["AA=="]}]},
            "needs 2",
        ),
        (
            {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [7]}]},
            "base64 string",
        ),
        (
            {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["bm90IGFu"]}]},
            "image",
        ),
        (
            {
                "inputs": [
                    {"name": "images", "shape": [1, 16, 16, 1], "datatype": "UINT8", "data": [300] * 256}
                ]
            },
            "0..255",
        ),
        (
            {"inputs": [{"name": "images", "shape": [1, 16, 16, 1], "datatype": "UINT8", "data": [1] * 200}]},
            "256",
        ),
    ],
)
def test_bad_request_400(oip_service, model_name, payload, message):
    response = post_infer(oip_service, model_name, payload)
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([{"name": "scores"}], "unknown output 'scores'"),
        ([{"name": "logits"}, {"name": "logits"}], "requested twice"),
        ([{"name": "logits", "parameters": {"classification": 11}}], "from 1 to 10"),
    ],
)
def test_bad_output_400(oip_service, model_name, images, outputs, message):
    tensor = {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [b64(images[0])]}
    response = post_infer(oip_service, model_name, {"inputs": [tensor], "outputs": outputs})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_two_inputs_400(client, model_name, images):
    error = infer_error(client, model_name, [bytes_input(images[:1]), bytes_input(images[:1])])
    assert error.status() == "400"
    assert "send exactly one" in error.message()


def test_too_many_images_413(client, model_name, images):
    error = infer_error(client, model_name, [bytes_input(images * 2)])
    assert error.status() == "413"
    assert f"over the limit of {MAX_IMAGES}" in error.message()


def test_binary_size_mismatch_400(oip_service, model_name):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, 16, 16, 1],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 300},
                }
            ]
        }
    ).encode()
    response = post_infer(
        oip_service,
        model_name,
        header + bytes(256),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400
    assert "binary_data_size 300" in response.json()["error"]


def test_unknown_v2_route_404(oip_service):
    response = httpx.get(f"{oip_service.url}/v2/repository/index", timeout=10)
    assert response.status_code == 404
    assert isinstance(response.json()["error"], str)


def test_predict_errors_keep_own_shape(oip_service):
    response = httpx.post(f"{oip_service.url}/predict", content=b"not an image", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"


@pytest.fixture(scope="module")
def float_export(tiny_run, tmp_path_factory):
    from training.export import export

    return export(
        tiny_run / "best.pt",
        tmp_path_factory.mktemp("exports") / "digits_f32",
        version="1",
        input_format="float32_nchw",
    )


def test_float_contract_served(float_export, images, tmp_path):
    offline = OnnxClassifier(float_export)
    contract = offline.manifest.input
    assert contract.format == "float32_nchw"
    pixels = offline.postprocessor.to_batch([load_array(data, offline.spec) for data in images])
    with ServiceProcess(float_export, env=LIMITS_ENV, log_path=tmp_path / "service.log") as service:
        client = triton.InferenceServerClient(service.url.removeprefix("http://"), network_timeout=60.0)
        metadata = client.get_model_metadata(offline.manifest.name)
        tensor = client.infer(offline.manifest.name, [pixels_input(pixels, "FP32")])
        encoded = client.infer(offline.manifest.name, [bytes_input(images)])
        wrong = infer_error(client, offline.manifest.name, [pixels_input(pixels.astype(np.uint8), "UINT8")])
        nan = pixels.copy()
        nan[0, 0, 0, 0] = np.nan
        not_finite = infer_error(client, offline.manifest.name, [pixels_input(nan, "FP32")])
    expected = offline_logits(offline, images)
    assert metadata["inputs"][0]["shape"] == [-1, 1, contract.height, contract.width]
    assert metadata["inputs"][0]["datatype"] == "FP32"
    np.testing.assert_allclose(tensor.as_numpy("logits"), expected, atol=1e-4)
    np.testing.assert_allclose(encoded.as_numpy("logits"), expected, atol=1e-4)
    assert wrong.status() == "400"
    assert "must have datatype FP32" in wrong.message()
    assert not_finite.status() == "400"
    assert "NaN or infinite" in not_finite.message()
