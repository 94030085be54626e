"""Request and response models of the HTTP API; BentoML turns them into the OpenAPI schema."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClassScore(BaseModel):
    label: str = Field(description="class name")
    score: float = Field(ge=0.0, le=1.0, description="softmax probability")


class Prediction(BaseModel):
    file: str = Field(description="file name the client sent, or images[i] / body when it sent none")
    label: str = Field(description="most probable class name")
    class_id: int = Field(ge=0, description="index of the most probable class")
    score: float = Field(ge=0.0, le=1.0, description="softmax probability of that class")
    top5: list[ClassScore] = Field(
        description="the most probable classes, best first (5, or fewer with fewer classes)"
    )


class PredictResponse(BaseModel):
    model: str = Field(description="export name from the manifest")
    version: str = Field(description="export version from the manifest")
    predictions: list[Prediction] = Field(description="one prediction per image, in request order")


class Base64Image(BaseModel):
    """One image of a JSON request."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        description="the encoded image file in base64 (standard or URL-safe alphabet); "
        "a data URI such as 'data:image/png;base64,...' is accepted too"
    )
    name: str | None = Field(default=None, description="name echoed back as 'file' in the prediction")


class Base64Request(BaseModel):
    """JSON body of ``POST /predict`` with ``Content-Type: application/json``."""

    model_config = ConfigDict(extra="forbid")

    images: list[Base64Image] = Field(description="one or more images; predictions come back in this order")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, for example 'invalid_image'")
    message: str = Field(description="what failed and what is allowed")
    item: str | None = Field(default=None, description="the file or part the error is about")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class InputInfo(BaseModel):
    format: str = Field(description="tensor layout and dtype the graph takes: uint8_nhwc or float32_nchw")
    shape: list[int | str] = Field(description="input tensor shape; 'batch' is the dynamic dimension")
    height: int
    width: int
    color_mode: str = Field(description="L (grayscale) or RGB")
    resize: str = Field(description="stretch or center_crop")
    interpolation: str
    mean: list[float] = Field(description="normalization mean per channel, on a 0..1 scale")
    std: list[float] = Field(description="normalization standard deviation per channel, on a 0..1 scale")


class BatchingInfo(BaseModel):
    max_batch_size: int = Field(description="maximum images in one onnxruntime call")
    max_latency_ms: int = Field(description="latency budget of one model call, queueing included")
    api_threads: int = Field(description="requests decoded at once")


class LimitsInfo(BaseModel):
    max_request_bytes: int
    max_images: int = Field(description="images per request")
    max_pixels: int = Field(description="pixels per image")


class AdmissionInfo(BaseModel):
    max_concurrent_requests: int = Field(description="inference requests in flight per API worker")
    max_queued_requests: int = Field(description="inference requests waiting for a slot; past it, 429")
    request_timeout_s: float = Field(description="seconds from arrival to response before a 504")
    retry_after_s: int = Field(description="Retry-After of a 429, in seconds")


class ExecutionInfo(BaseModel):
    backend: str = Field(description="onnx or torchscript")
    providers: list[str] = Field(description="execution providers in use, in priority order")
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    graph_optimization: str | None = None
    io_binding: bool | None = None
    device_id: int | None = Field(default=None, description="GPU index, when on a GPU")
    cudnn_conv_algo_search: str | None = None
    torch: str | None = Field(default=None, description="torch version of the torchscript backend")


class ModelInfo(BaseModel):
    """Response of ``GET /model``."""

    name: str
    version: str
    architecture: str
    classes: list[str] = Field(description="class names, indexed by class_id")
    input: InputInfo
    execution_providers: list[str] = Field(description="onnxruntime execution providers in use, in order")
    execution: ExecutionInfo | None = Field(
        default=None, description="None until the model process is loaded"
    )
    batching: BatchingInfo
    limits: LimitsInfo
    admission: AdmissionInfo
