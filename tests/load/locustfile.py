"""Locust load test for the image classifier: each user posts one real PNG per request.

Headless, bounded run against a local service:

    locust -f tests/load/locustfile.py --headless -u 8 -r 8 -t 20s --host http://127.0.0.1:3000

or through ``python -m serving.loadtest``, which adds latency limits. With no flags, locust serves
its web UI on http://127.0.0.1:8089.

Images come from the folder in ``LOAD_IMAGES`` (every .png/.jpg under it), or, when it is unset,
from scikit-learn's embedded digits, encoded as PNG in memory.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

from locust import HttpUser, between, events, task

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
IMAGES: list[tuple[str, bytes]] = []


def load_image_pool() -> list[tuple[str, bytes]]:
    folder = os.environ.get("LOAD_IMAGES")
    if folder:
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise RuntimeError(f"LOAD_IMAGES={folder} contains no .png or .jpg files")
        return [(p.name, p.read_bytes()) for p in paths]

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    pool = []
    for index, pixels in enumerate(load_digits().images[:200]):
        scaled = np.round(pixels * 255.0 / 16.0).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(scaled).save(buffer, format="PNG")
        pool.append((f"digit_{index}.png", buffer.getvalue()))
    return pool


@events.init.add_listener
def on_locust_init(environment, **kwargs) -> None:
    IMAGES[:] = load_image_pool()


class ImageClassifierUser(HttpUser):
    wait_time = between(0.0, 0.01)

    @task
    def predict(self) -> None:
        # A fresh payload per request, so no request reuses another's file object.
        file_name, data = random.choice(IMAGES)
        files = {"images": (file_name, data, "image/png")}
        with self.client.post("/predict", files=files, name="/predict", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            try:
                predictions = response.json()["predictions"]
            except (ValueError, KeyError) as exc:
                response.failure(f"response is not a prediction list: {exc}")
                return
            if len(predictions) != 1 or not isinstance(predictions[0].get("label"), str):
                response.failure(f"expected one prediction with a label, got {predictions!r:.200}")
                return
            response.success()
