# Serving image: the BentoML service and onnxruntime, no torch.
#   docker build -t image-classifier .
#   docker run -p 3000:3000 -v "$PWD/exports/digits:/models:ro" image-classifier
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MODEL_DIR=/models

WORKDIR /app
COPY pyproject.toml README.md ./
COPY serving ./serving
RUN pip install '.[serve]'

RUN useradd --create-home --uid 10001 app && mkdir -p /models && chown app /models
USER app

EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=2).status == 200 else 1)"

CMD ["bentoml", "serve", "serving.service:ImageClassifier", "--host", "0.0.0.0", "--port", "3000"]
