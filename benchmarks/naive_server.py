"""The baseline most people write first: FastAPI, Pillow, torch eager, one image per request.

    python benchmarks/naive_server.py --checkpoint CKPT --port 8001

It serves ``POST /predict`` with the same multipart field and response shape as the real service,
so the same locust file drives both. No batching, no ONNX, no worker tuning: that is the point.
"""

import argparse
import io
import sys
from pathlib import Path

# FastAPI resolves the endpoint's annotations at import of this module, so these stay at the top.
from fastapi import FastAPI, File, HTTPException, UploadFile  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_app(checkpoint: Path):
    import torch
    from PIL import Image

    from training.data.transforms import build_eval_transform
    from training.export import load_model_from_checkpoint

    model, config, class_names, _ = load_model_from_checkpoint(checkpoint)
    transform = build_eval_transform(config.data)
    app = FastAPI()

    @app.post("/predict")
    def predict(images: list[UploadFile] = File(...)):  # noqa: B008 (FastAPI's declaration style)
        predictions = []
        for upload in images:
            try:
                image = Image.open(io.BytesIO(upload.file.read()))
                image.load()
            except OSError as exc:
                raise HTTPException(status_code=400, detail=f"{upload.filename}: {exc}") from exc
            with torch.no_grad():
                probabilities = model(transform(image).unsqueeze(0)).softmax(dim=1)[0]
            class_id = int(probabilities.argmax())
            predictions.append(
                {"file": upload.filename, "label": class_names[class_id], "class_id": class_id,
                 "score": float(probabilities[class_id])}
            )  # fmt: skip
        return {"predictions": predictions}

    @app.get("/readyz")
    def readyz():
        return {"ready": True}

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    import torch
    import uvicorn

    if args.threads:
        torch.set_num_threads(args.threads)
    uvicorn.run(build_app(args.checkpoint), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
