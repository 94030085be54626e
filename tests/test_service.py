"""Tests against the real BentoML service, started on a free 127.0.0.1 port."""

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.engine import OnnxClassifier
from serving.preprocess import load_array
from training.predict import predict_files


def post_files(url, files, timeout=60):
    return httpx.post(f"{url}/predict", files=files, timeout=timeout)


def as_files(paths):
    return [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]


def test_health_endpoints(service):
    for path in ("/livez", "/readyz", "/metrics"):
        response = httpx.get(f"{service.url}{path}", timeout=10)
        assert response.status_code == 200, path


def test_served_labels_equal_offline(service, tiny_run, tiny_export, digit_pngs):
    paths, _ = digit_pngs
    response = post_files(service.url, as_files(paths))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    served = [p["class_id"] for p in predictions]

    classifier = OnnxClassifier(tiny_export)
    onnx_ids = [
        row[0].class_id for row in classifier.predict_arrays([load_array(p, classifier.spec) for p in paths])
    ]
    eager_ids, _, _ = predict_files(tiny_run / "best.pt", paths)
    assert served == onnx_ids
    assert served == eager_ids


def test_response_schema(service, digit_pngs):
    paths, _ = digit_pngs
    body = post_files(service.url, as_files(paths[:3])).json()
    assert body["model"] == "digits"
    assert body["version"] == "1"
    assert [p["file"] for p in body["predictions"]] == [p.name for p in paths[:3]]
    for prediction in body["predictions"]:
        assert prediction["label"] == str(prediction["class_id"])
        assert len(prediction["top5"]) == 5
        scores = [entry["score"] for entry in prediction["top5"]]
        assert scores == sorted(scores, reverse=True)
        assert prediction["top5"][0]["label"] == prediction["label"]
        assert prediction["score"] == pytest.approx(scores[0])


def test_request_larger_than_max_batch(service, digit_pngs):
    paths, _ = digit_pngs
    many = (paths * 2)[:64]  # over the default max_batch_size of 32, at the default image limit
    response = post_files(service.url, as_files(many))
    assert response.status_code == 200
    names = [p["file"] for p in response.json()["predictions"]]
    assert names == [p.name for p in many]


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"this is not an image", "not a recognized image format"), (b"", "empty file")],
)
def test_non_image_gets_400(service, digit_pngs, content, reason):
    paths, _ = digit_pngs
    files = [*as_files(paths[:1]), ("images", ("notes.png", content, "image/png"))]
    response = post_files(service.url, files)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_image"
    assert error["item"] == "notes.png"
    assert reason in error["message"]

    after = post_files(service.url, as_files(paths[:1]))
    assert after.status_code == 200


def test_concurrent_requests_get_own_answers(service, digit_pngs):
    paths, _ = digit_pngs
    expected = {
        p.name: post_files(service.url, as_files([p])).json()["predictions"][0]["class_id"] for p in paths
    }

    def one(path):
        body = post_files(service.url, as_files([path])).json()
        return path.name, body["predictions"][0]["file"], body["predictions"][0]["class_id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, paths * 3))
    for sent, answered_file, class_id in results:
        assert answered_file == sent
        assert class_id == expected[sent]


def test_openapi_lists_prediction_schema(service):
    schema = httpx.get(f"{service.url}/docs.json", timeout=10).json()
    assert "/predict" in schema["paths"]
    assert "Prediction" in str(schema)


def batch_size_histogram(url):
    """Return (count, sum) of BentoML's adaptive batch size histogram for the model service."""
    count = total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if 'runner_name="onnx_model"' not in line:
            continue
        if line.startswith("bentoml_service_adaptive_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("bentoml_service_adaptive_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
    return count, total


def test_concurrent_requests_merged_into_batches(service, digit_pngs):
    """The batch size histogram counts requests per model call; a sum over the count means merging."""
    paths, _ = digit_pngs
    barrier = threading.Barrier(16)

    def one(path):
        barrier.wait(timeout=30)
        return post_files(service.url, as_files([path])).status_code

    before_count, before_sum = batch_size_histogram(service.url)
    for _ in range(20):
        with ThreadPoolExecutor(max_workers=16) as pool:
            assert set(pool.map(one, paths[:16])) == {200}
        count, total = batch_size_histogram(service.url)
        if total - before_sum > count - before_count:
            break
    assert count > before_count
    assert total - before_sum > count - before_count, "no model call merged two requests"
