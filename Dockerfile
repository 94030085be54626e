# Images for serving and training, one target each:
#   docker build --target serving     -t image-classifier:cpu .
#   docker build --target serving-gpu -t image-classifier:gpu .
#   docker build --target training    -t image-classifier-train .
# The serving images read the export from /models: mount it at run time, or bake it in with
#   docker build --target serving --build-arg MODEL_SRC=exports/digits -t image-classifier:digits .
#
# Base images, with the tags checked against the Docker Official Images "library/python" file and
# against the tags NVIDIA publishes for nvidia/cuda:
# - python:3.11-slim-trixie. The project is tested on Python 3.11. The minor-version tag receives
#   patch releases on rebuild, and naming Debian 13 (trixie) stops a rebuild from moving to a new
#   Debian release without notice.
# - nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04. onnxruntime-gpu 1.31 wheels are built against
#   CUDA 13.0 and cuDNN 9 (onnxruntime.capi.build_and_package_info.cuda_version is "13.0"), and its
#   CUDA provider links cuBLAS, cuRAND and the CUDA runtime, which the "runtime" flavor has without
#   the compilers of "devel". Ubuntu 24.04 brings Python 3.12, for which onnxruntime-gpu ships wheels.
ARG PYTHON_IMAGE=python:3.11-slim-trixie
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
# Folder copied to /models. The default holds only a README, so a container built without the
# argument expects the export to be mounted at /models.
ARG MODEL_SRC=deploy/docker/no-model


# The serving virtual environment, built in its own stage so the project sources, the build
# backend and pip's work files stay out of the image.
FROM ${PYTHON_IMAGE} AS serving-builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY serving ./serving
# tests/test_deploy.py runs this install line in a fresh virtual environment and serves from it.
# DL3013 asks for pinned versions: this installs the project itself, whose dependency versions
# are declared in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[serve]"


# CPU serving: BentoML and onnxruntime, no torch.
FROM ${PYTHON_IMAGE} AS serving
ARG MODEL_SRC
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    MODEL_DIR=/models \
    BENTOML_DO_NOT_TRACK=true
RUN useradd --create-home --uid 10001 app
COPY --from=serving-builder /opt/venv /opt/venv
COPY ${MODEL_SRC} /models
USER 10001
# The service is imported from the virtual environment, not from a source folder.
WORKDIR /home/app
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=2).status != 200)"]
CMD ["bentoml", "serve", "serving.service:ImageClassifier", "--host", "0.0.0.0", "--port", "3000"]


# The GPU serving environment is built on the CUDA image itself, because a virtual environment
# only works with the interpreter it was created with (here Ubuntu's /usr/bin/python3).
FROM ${CUDA_IMAGE} AS serving-gpu-builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# Package versions are not pinned: the base image tag fixes the Ubuntu release, and the archive
# drops superseded versions, which would break a pinned build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY serving ./serving
# hadolint ignore=DL3013
RUN pip install ".[serve]"


# GPU serving: the same service on onnxruntime's CUDA provider. Run with a GPU attached
# (docker run --gpus all, or nvidia.com/gpu on Kubernetes); with none, it serves on the CPU.
FROM ${CUDA_IMAGE} AS serving-gpu
ARG MODEL_SRC
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    MODEL_DIR=/models \
    BENTOML_DO_NOT_TRACK=true
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 app
COPY --from=serving-gpu-builder /opt/venv /opt/venv
COPY ${MODEL_SRC} /models
USER 10001
WORKDIR /home/app
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=2).status != 200)"]
CMD ["bentoml", "serve", "serving.service:ImageClassifier", "--host", "0.0.0.0", "--port", "3000"]


# Training and export with torch. torch's Linux wheels bring their own CUDA libraries, so this
# image trains on a GPU when one is attached, and on the CPU otherwise.
# NOTE: the CUDA libraries make this image several GB; it is meant for training nodes only.
FROM ${PYTHON_IMAGE} AS training
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && useradd --create-home --uid 10001 app
WORKDIR /app
COPY pyproject.toml README.md ./
COPY serving ./serving
COPY training ./training
# hadolint ignore=DL3013
RUN pip install ".[train]"
COPY configs ./configs
# Runs, exports and data sets are written under /app; mount volumes there to keep them.
RUN mkdir runs exports data && chown app runs exports data
USER 10001
CMD ["python", "-m", "training", "train", "--config", "configs/digits.yaml"]
