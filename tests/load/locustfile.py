"""Locust load test for the image classifier: each user posts one real image per request.

Headless, bounded run against a local service:

    locust -f tests/load/locustfile.py --headless -u 8 -r 8 -t 20s --host http://127.0.0.1:3000

or through ``python -m serving.loadtest``, which adds latency and error limits. With no
``--headless``, locust serves its web UI on http://127.0.0.1:8089.

Environment variables:
- ``LOAD_IMAGES``: a folder whose .png/.jpg/.jpeg files are posted (default: scikit-learn's embedded
  digits, encoded as PNG in memory).
- ``LOAD_RATE``: requests per second per user. Each user waits an exponentially distributed gap
  after each response, so arrivals are Poisson-like; the rate is reached while responses are short
  next to the gaps. Default: back-to-back requests.
- ``LOAD_SHAPE=step``: ramp in steps instead of a fixed user count: ``LOAD_STEP_USERS`` more users
  (default 4) every ``LOAD_STEP_SECONDS`` (default 10) up to ``LOAD_MAX_USERS`` (default 32), then
  stop after ``LOAD_TIME_LIMIT`` seconds (default 120).

Every response is checked: status, JSON schema, one prediction per image, the label in the model's
class list (read from ``GET /model`` when the service has it). A 429 is recorded under its own name,
``/predict 429``, so rejections by admission control are counted apart from failures, and the user
waits for its Retry-After (at most 5 s) before the next request, as a well-behaved client does.
"""

from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path

from locust import HttpUser, LoadTestShape, events, task

logger = logging.getLogger("locustfile")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
IMAGES: list[tuple[str, bytes, str]] = []
CLASS_NAMES: set[str] = set()


def load_image_pool() -> list[tuple[str, bytes, str]]:
    """Return (file name, bytes, media type) of every image to post."""
    folder = os.environ.get("LOAD_IMAGES")
    if folder:
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise RuntimeError(f"LOAD_IMAGES={folder} contains no .png, .jpg or .jpeg files")
        return [(p.name, p.read_bytes(), MEDIA_TYPES[p.suffix.lower()]) for p in paths]

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    pool = []
    for index, pixels in enumerate(load_digits().images[:200]):
        scaled = np.round(pixels * 255.0 / 16.0).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(scaled).save(buffer, format="PNG")
        pool.append((f"digit_{index}.png", buffer.getvalue(), "image/png"))
    return pool


@events.init.add_listener
def on_locust_init(environment, **kwargs) -> None:
    IMAGES[:] = load_image_pool()


@events.test_start.add_listener
def on_test_start(environment, **kwargs) -> None:
    """Read the class list once, so every response's label can be checked against it."""
    import urllib.error
    import urllib.request

    if not environment.host:
        return
    try:
        with urllib.request.urlopen(f"{environment.host}/model", timeout=5) as response:
            import json

            CLASS_NAMES.update(json.load(response).get("classes", []))
    except (urllib.error.URLError, ValueError, TimeoutError) as exc:
        logger.warning("GET /model failed (%s); labels are checked for type only", exc)


class ImageClassifierUser(HttpUser):
    rate = float(os.environ.get("LOAD_RATE", "0"))
    # Seconds this user waits before its next request after a 429, from the Retry-After header.
    backoff = 0.0

    def wait_time(self) -> float:
        if self.backoff:
            # A well-behaved client honours Retry-After; retrying at once would load the server with
            # rejections and measure the retry storm instead of the service.
            delay, self.backoff = self.backoff, 0.0
            return delay
        if self.rate:
            # Exponential gaps give Poisson-like arrivals, so users started together do not fire in sync.
            return random.expovariate(self.rate)
        return random.uniform(0.0, 0.01)

    @task
    def predict(self) -> None:
        # A fresh payload per request, so no request shares a file object with another.
        file_name, data, media_type = random.choice(IMAGES)
        files = {"images": (file_name, data, media_type)}
        with self.client.post("/predict", files=files, name="/predict", catch_response=True) as response:
            if response.status_code == 429:
                # Counted under its own name; not a failure of the service.
                response.request_meta["name"] = "/predict 429"
                response.success()
                self.backoff = retry_after_seconds(response)
                return
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            problem = check_prediction(response, file_name)
            if problem:
                response.failure(problem)
            else:
                response.success()


def retry_after_seconds(response, limit: float = 5.0) -> float:
    """Return the response's Retry-After in seconds, capped at ``limit`` (1 when missing or a date)."""
    try:
        return min(limit, max(0.0, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def check_prediction(response, file_name: str) -> str | None:
    """Return what is wrong with a /predict response for one file, or None."""
    try:
        body = response.json()
        predictions = body["predictions"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"response is not a prediction list: {exc}"
    if len(predictions) != 1:
        return f"expected 1 prediction, got {len(predictions)}"
    prediction = predictions[0]
    label = prediction.get("label")
    if not isinstance(label, str):
        return f"label is not a string: {label!r}"
    if CLASS_NAMES and label not in CLASS_NAMES:
        return f"label {label!r} is not in the model's class list"
    if prediction.get("file") != file_name:
        return f"answer is for {prediction.get('file')!r}, the request sent {file_name!r}"
    if not 0.0 <= float(prediction.get("score", -1)) <= 1.0:
        return f"score out of range: {prediction.get('score')!r}"
    return None


if os.environ.get("LOAD_SHAPE") == "step":

    class StepLoadShape(LoadTestShape):
        """Add users in steps; stop at the time limit."""

        step_users = int(os.environ.get("LOAD_STEP_USERS", "4"))
        step_seconds = float(os.environ.get("LOAD_STEP_SECONDS", "10"))
        max_users = int(os.environ.get("LOAD_MAX_USERS", "32"))
        time_limit = float(os.environ.get("LOAD_TIME_LIMIT", "120"))

        def tick(self):
            run_time = self.get_run_time()
            if run_time > self.time_limit:
                return None
            users = min(self.max_users, self.step_users * (int(run_time // self.step_seconds) + 1))
            return users, self.step_users
