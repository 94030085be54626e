"""What clients send to ``POST /predict``, against the real service with small request limits."""

from __future__ import annotations

import base64
import http.server
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from test_preprocess import png_header_only

from serving.engine import OnnxClassifier
from serving.errors import ClientError, RejectionLog
from serving.intake import decode_base64
from serving.launcher import ServiceProcess
from serving.preprocess import load_array

REJECTION_INTERVAL_S = 2.0
LIMITS_ENV = {
    "MAX_REQUEST_BYTES": "300000",
    "MAX_IMAGES_PER_REQUEST": "6",
    "MAX_IMAGE_PIXELS": "1000000",
    "MAX_BATCH_SIZE": "4",
    "SHUTDOWN_DELAY_S": "0",
    "REJECTION_LOG_INTERVAL_S": str(REJECTION_INTERVAL_S),
}


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def limited_service(tiny_export, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("inputs") / "service.log"
    with ServiceProcess(tiny_export, env=LIMITS_ENV, log_path=log_path) as running:
        yield running


@pytest.fixture(scope="module")
def offline(tiny_export):
    return OnnxClassifier(tiny_export)


@pytest.fixture(scope="module")
def digits():
    """Ten real digit scans as uint8 8x8 arrays, one per class."""
    from sklearn.datasets import load_digits

    from training.data.datasets import digits_to_uint8

    bunch = load_digits()
    firsts = [int(np.flatnonzero(bunch.target == digit)[0]) for digit in range(10)]
    return [digits_to_uint8(bunch.images[index]) for index in firsts]


def post(service, **kwargs) -> httpx.Response:
    return httpx.post(f"{service.url}/predict", timeout=60, **kwargs)


def post_files(service, files) -> httpx.Response:
    return post(service, files=[("images", file) for file in files])


def expected_top(offline, data: bytes) -> tuple[int, float]:
    row = offline.predict_arrays([load_array(data, offline.spec)])[0][0]
    return row.class_id, row.score


def mode_files(pixels: np.ndarray) -> dict[str, bytes]:
    """One file per Pillow mode and format a client may send, all showing the same digit."""
    gray = Image.fromarray(pixels)
    palette = gray.convert("P")
    palette.info["transparency"] = 0
    rgba = gray.convert("RGBA")
    frames = [gray, Image.fromarray(255 - pixels)]
    return {
        "1 png": encode(gray.convert("1")),
        "L png": encode(gray),
        "LA png": encode(gray.convert("LA")),
        "P png": encode(gray.convert("P")),
        "P transparency png": encode(palette),
        "RGB jpeg": encode(gray.convert("RGB"), "JPEG", quality=95),
        "RGBA png": encode(rgba),
        "RGBA webp": encode(rgba, "WEBP", lossless=True),
        "CMYK jpeg": encode(gray.convert("CMYK"), "JPEG", quality=95),
        "CMYK tiff": encode(gray.convert("CMYK"), "TIFF"),
        "YCbCr tiff": encode(gray.convert("RGB").convert("YCbCr"), "TIFF"),
        "LAB tiff": encode(gray.convert("RGB").convert("LAB"), "TIFF"),
        "I;16 png": encode(Image.fromarray(pixels.astype(np.uint16) * 257)),
        "I;16 tiff": encode(Image.fromarray(pixels.astype(np.uint16) * 257), "TIFF"),
        "I tiff": encode(Image.fromarray(pixels.astype(np.int32) * 257), "TIFF"),
        "F tiff": encode(Image.fromarray(pixels.astype(np.float32) / 255.0), "TIFF"),
        "RGB bmp": encode(gray.convert("RGB"), "BMP"),
        "L ppm": encode(gray, "PPM"),
        "multi-frame gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "multi-page tiff": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
    }


def test_every_mode_served_as_offline(limited_service, offline, digits):
    files = mode_files(digits[3])
    for name, data in files.items():
        response = post_files(limited_service, [(f"{name}.bin", data, "application/octet-stream")])
        assert response.status_code == 200, f"{name}: {response.text}"
        prediction = response.json()["predictions"][0]
        class_id, score = expected_top(offline, data)
        assert prediction["class_id"] == class_id, name
        assert prediction["score"] == pytest.approx(score, abs=1e-5), name


def test_high_depth_matches_eight_bit(limited_service, digits):
    files = mode_files(digits[5])
    reference = post_files(limited_service, [("l.png", files["L png"], "image/png")]).json()
    for name in ("I;16 png", "I;16 tiff", "I tiff", "F tiff"):
        served = post_files(limited_service, [("x", files[name], "image/tiff")]).json()
        assert served["predictions"][0]["class_id"] == reference["predictions"][0]["class_id"], name
        assert served["predictions"][0]["score"] == pytest.approx(
            reference["predictions"][0]["score"], abs=0.02
        )


def test_exif_rotation_applied(limited_service, digits):
    upright = Image.fromarray(digits[7])
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed after a 90 degree clockwise turn
    stored = Image.fromarray(np.rot90(digits[7]).copy())
    rotated = post_files(limited_service, [("rotated.png", encode(stored, exif=exif.tobytes()), "image/png")])
    reference = post_files(limited_service, [("upright.png", encode(upright), "image/png")])
    assert rotated.json()["predictions"][0]["class_id"] == reference.json()["predictions"][0]["class_id"]
    assert rotated.json()["predictions"][0]["score"] == pytest.approx(
        reference.json()["predictions"][0]["score"]
    )


def test_jpeg_sent_as_png(limited_service, digits):
    data = encode(Image.fromarray(digits[2]), "JPEG", quality=90)
    as_png = post_files(limited_service, [("digit.png", data, "image/png")])
    as_jpeg = post_files(limited_service, [("digit.jpg", data, "image/jpeg")])
    assert as_png.status_code == 200
    assert as_png.json()["predictions"][0]["top5"] == as_jpeg.json()["predictions"][0]["top5"]


def test_raw_body_and_json(limited_service, digits):
    data = encode(Image.fromarray(digits[4]))
    multipart = post_files(limited_service, [("four.png", data, "image/png")]).json()["predictions"][0]
    raw = post(limited_service, content=data, headers={"content-type": "application/octet-stream"})
    urlencoded = post(
        limited_service, content=data, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    encoded = base64.b64encode(data).decode()
    as_json = post(limited_service, json={"images": [{"data": encoded, "name": "four.png"}]})
    data_uri = post(limited_service, json={"images": [{"data": f"data:image/png;base64,{encoded}"}]})
    for response in (raw, urlencoded, as_json, data_uri):
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["top5"] == multipart["top5"]
    assert raw.json()["predictions"][0]["file"] == "body"
    assert as_json.json()["predictions"][0]["file"] == "four.png"
    assert data_uri.json()["predictions"][0]["file"] == "images[0]"


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("truncated.jpg", truncated_jpeg(), 400, "invalid_image"),
        ("notes.png", b"these are notes, not pixels", 400, "invalid_image"),
        ("empty.png", b"", 400, "invalid_image"),
        ("tiny-but-huge.png", png_header_only(2000, 2000), 413, "image_too_large"),
        ("bomb.png", png_header_only(100_000, 100_000), 413, "image_too_large"),
        ("photo.heic", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, 415, "unsupported_format"),
        ("scan.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", 415, "unsupported_format"),
    ],
)
def test_bad_file_rejected(limited_service, digits, name, data, status, code):
    good = ("good.png", encode(Image.fromarray(digits[1])), "image/png")
    response = post_files(limited_service, [good, (name, data, "image/png")])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["item"] == name
    assert name in error["message"]


def test_oversize_request_rejected(limited_service, digits):
    big = np.random.default_rng(1).integers(0, 255, (400, 400), dtype=np.uint8)
    data = encode(Image.fromarray(big))  # noise does not compress: about 160 KB each
    declared = post_files(limited_service, [("a.png", data, "image/png"), ("b.png", data, "image/png")])
    streamed = post(limited_service, content=iter([data, data]), headers={"content-type": "image/png"})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        assert "300,000 bytes" in response.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["multipart", "json"])
def test_too_many_images_rejected(limited_service, digits, kind):
    data = encode(Image.fromarray(digits[0]))
    if kind == "multipart":
        response = post_files(limited_service, [(f"{i}.png", data, "image/png") for i in range(7)])
    else:
        images = [{"data": base64.b64encode(data).decode()} for _ in range(7)]
        response = post(limited_service, json={"images": images})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_images"
    assert "MAX_IMAGES_PER_REQUEST" in response.json()["error"]["message"]


class CountingHandler(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):
        CountingHandler.hits += 1
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("form", "code"), [("multipart", "not_a_file"), ("urlencoded", "invalid_image")])
def test_url_in_file_field_not_fetched(limited_service, digits, form, code):
    server = http.server.HTTPServer(("127.0.0.1", 0), CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/digit.png"
        files = [("images", ("a.png", encode(Image.fromarray(digits[0])), "image/png"))]
        response = post(limited_service, data={"images": url}, files=files if form == "multipart" else None)
    finally:
        server.shutdown()
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert CountingHandler.hits == 0


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"content": b"", "headers": {"content-type": "image/png"}}, "invalid_image"),
        ({"files": [("photo", ("a.png", b"x", "image/png"))]}, "unknown_field"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, "invalid_json"),
        ({"json": {"pictures": []}}, "invalid_request"),
        ({"json": {"images": []}}, "no_images"),
        ({"json": {"images": [{"data": "not*base64!"}]}}, "invalid_base64"),
        (
            {
                "content": b"--xyz\r\nContent-Disposition: form-data",
                "headers": {"content-type": "multipart/form-data; boundary=xyz"},
            },
            "invalid_multipart",
        ),
        (
            {"content": b"--xyz--\r\n", "headers": {"content-type": "multipart/form-data"}},
            "invalid_multipart",
        ),
    ],
)
def test_malformed_request_rejected(limited_service, kwargs, code):
    response = post(limited_service, **kwargs)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/predict", 405), ("GET", "/no-such-page", 404)]
)
def test_http_errors_are_json(limited_service, method, path, status):
    response = httpx.request(method, f"{limited_service.url}{path}", timeout=10)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"code", "message", "item"}


def test_split_request_keeps_order(limited_service, digits):
    files = [(f"digit_{d}.png", encode(Image.fromarray(digits[d])), "image/png") for d in (9, 8, 7, 6, 5, 4)]
    together = post_files(limited_service, files).json()["predictions"]
    alone = [post_files(limited_service, [file]).json()["predictions"][0] for file in files]
    assert [p["file"] for p in together] == [file[0] for file in files]
    assert [p["top5"] for p in together] == [p["top5"] for p in alone]


def test_bad_request_spares_concurrent_ones(limited_service, digits):
    files = [(f"digit_{d}.png", encode(Image.fromarray(digits[d])), "image/png") for d in range(10)]
    expected = {
        file[0]: post_files(limited_service, [file]).json()["predictions"][0]["top5"] for file in files
    }
    bad = ("broken.jpg", truncated_jpeg(), "image/jpeg")
    requests = [[file] for file in files] * 3 + [[files[0], bad]] * 6

    def send(request):
        return request, post_files(limited_service, request)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, requests))
    for request, response in results:
        if len(request) == 2:
            assert response.status_code == 400
            assert response.json()["error"]["item"] == "broken.jpg"
        else:
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["top5"] == expected[request[0][0]]


def test_model_endpoint(limited_service, tiny_export):
    info = httpx.get(f"{limited_service.url}/model", timeout=10).json()
    manifest = OnnxClassifier(tiny_export).manifest
    assert info["name"] == manifest.name
    assert info["version"] == manifest.version
    assert info["classes"] == manifest.class_names
    assert info["input"]["shape"] == ["batch", 16, 16, 1]
    assert info["execution_providers"] == ["CPUExecutionProvider"]
    assert info["batching"]["max_batch_size"] == 4
    assert info["limits"] == {"max_request_bytes": 300000, "max_images": 6, "max_pixels": 1000000}


def test_openapi_documents_inputs(limited_service):
    schema = httpx.get(f"{limited_service.url}/docs.json", timeout=10).json()
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "base64" in schema["paths"]["/predict"]["post"]["description"]
    assert "/model" in schema["paths"]
    assert "ModelInfo" in schema["components"]["schemas"]


def test_rejections_logged_rate_limited(limited_service):
    def send_empty_body():
        post(limited_service, content=b"", headers={"content-type": "image/png"})

    time.sleep(REJECTION_INTERVAL_S)  # earlier tests' rejections fall out of the interval
    start = len(limited_service.log_path.read_text())
    for _ in range(3):
        send_empty_body()
    time.sleep(REJECTION_INTERVAL_S)
    send_empty_body()
    time.sleep(0.5)  # the log file is written by another process
    lines = [
        line
        for line in limited_service.log_path.read_text()[start:].splitlines()
        if "rejected request: 400 invalid_image: the request body is empty" in line
    ]
    assert len(lines) == 2
    assert "2 more 'invalid_image' rejections since the previous line were not logged" in lines[1]


def test_rejection_log_counts_repeats(caplog):
    now = [0.0]
    rejections = RejectionLog(logging.getLogger("test.rejections"), interval_s=10.0, clock=lambda: now[0])
    error = ClientError(413, "too_many_images", "too many", None)
    with caplog.at_level(logging.INFO, logger="test.rejections"):
        logged = [rejections.record(error) for _ in range(4)]
        now[0] = 11.0
        logged.append(rejections.record(error))
    assert logged == [True, False, False, False, True]
    assert len(caplog.records) == 2
    assert "3 more 'too_many_images' rejections" in caplog.records[1].getMessage()
    assert rejections.counts == {"too_many_images": 5}


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(b"\x89PNG data").decode(),
        base64.urlsafe_b64encode(b"\xfb\xff\xfe data").decode().rstrip("="),
        "data:image/png;base64," + base64.b64encode(b"\x89PNG data").decode(),
        " iVBO\nRw0K ",
    ],
)
def test_base64_variants_decode(text):
    assert decode_base64(text, "images[0]")
