"""Service settings: batching, threads, shutdown, admission control and the backend, from the environment.

Each field is read from the environment variable named in ``ENV_NAMES``. The values are validated
once at import of ``serving.service``, so an invalid value stops ``bentoml serve`` with a message
that names the variable. Request limits are in ``serving.limits`` and execution providers in
``serving.providers``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV_NAMES = {
    "model_dir": "MODEL_DIR",
    "backend": "BACKEND",
    "max_batch_size": "MAX_BATCH_SIZE",
    "max_latency_ms": "MAX_LATENCY_MS",
    "api_threads": "API_THREADS",
    "shutdown_delay_s": "SHUTDOWN_DELAY_S",
    "drain_timeout_s": "DRAIN_TIMEOUT_S",
    "rejection_log_interval_s": "REJECTION_LOG_INTERVAL_S",
    "max_concurrent_requests": "MAX_CONCURRENT_REQUESTS",
    "max_queued_requests": "MAX_QUEUED_REQUESTS",
    "request_timeout_s": "REQUEST_TIMEOUT_S",
    "retry_after_s": "RETRY_AFTER_S",
}


class ServiceSettings(BaseModel):
    """Settings of the two service processes; ``ENV_NAMES`` maps each field to its variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_dir: str = Field(default="exports/digits", description="export folder")
    backend: Literal["onnx", "torchscript"] = Field(
        default="onnx", description="onnx (onnxruntime) or torchscript (model.pt; needs torch installed)"
    )
    max_batch_size: int = Field(default=32, gt=0, description="maximum images in one model call")
    max_latency_ms: int = Field(
        default=1000, gt=0, description="latency budget of one model call in ms, queueing included"
    )
    api_threads: int = Field(default=4, gt=0, description="requests decoded at once by each API worker")
    shutdown_delay_s: float = Field(default=2.0, ge=0, description="seconds of 503 on /readyz after SIGTERM")
    drain_timeout_s: float = Field(
        default=120.0, ge=0, description="maximum seconds the model process waits for the API after SIGTERM"
    )
    rejection_log_interval_s: float = Field(
        default=10.0, ge=0, description="seconds between two log lines about rejections with one code"
    )
    # NOTE: the admission defaults are multiples of api_threads, chosen so that adaptive batching
    # gets several requests at once; they are not tuned by a measurement.
    max_concurrent_requests: int | None = Field(
        default=None,
        gt=0,
        description="inference requests in flight per API worker (default 2 x api_threads)",
    )
    max_queued_requests: int | None = Field(
        default=None, ge=0, description="inference requests waiting for a slot (default 4 x api_threads)"
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="seconds from arrival to response before the service returns 504"
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After value of a 429, in seconds")

    @model_validator(mode="after")
    def _fill_admission_defaults(self) -> ServiceSettings:
        if self.max_concurrent_requests is None:
            object.__setattr__(self, "max_concurrent_requests", 2 * self.api_threads)
        if self.max_queued_requests is None:
            object.__setattr__(self, "max_queued_requests", 4 * self.api_threads)
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read every setting from ``environ`` (default ``os.environ``); raise ValueError naming bad ones."""
        return read_env_model(cls, ENV_NAMES, "service setting", environ)


def read_env_model(model: type[BaseModel], env_names: dict[str, str], kind: str, environ=None):
    """Validate ``model`` from the variables in ``env_names``; an empty variable counts as unset."""
    environ = os.environ if environ is None else environ
    values = {field: environ[name] for field, name in env_names.items() if environ.get(name, "").strip()}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(_describe(error, env_names, environ) for error in exc.errors())
        raise ValueError(f"invalid {kind}: {problems}") from None


def _describe(error: dict, env_names: dict[str, str], environ: Mapping[str, str]) -> str:
    if not error["loc"]:
        return error["msg"]
    name = env_names.get(str(error["loc"][0]), str(error["loc"][0]))
    return f"{name}={environ.get(name, error['input'])!r}: {error['msg']}"
