"""Request limits of the HTTP API, read from the environment.

Every limit is checked before any pixel is decoded, so a request over one costs no pixel memory.
The byte limit is checked on ``Content-Length`` and again while the body streams in. The image
count is checked while the parts are parsed, and the pixel count on each image's header.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_NAMES = {
    "max_request_bytes": "MAX_REQUEST_BYTES",
    "max_images": "MAX_IMAGES_PER_REQUEST",
    "max_pixels": "MAX_IMAGE_PIXELS",
}


class RequestLimits(BaseModel):
    """Maximum request size the service accepts; a request over any limit gets status 413."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_request_bytes: int = Field(
        default=20_000_000, gt=0, description="bytes in one request body, multipart framing included"
    )
    max_images: int = Field(default=64, gt=0, description="images in one request")
    max_pixels: int = Field(default=40_000_000, gt=0, description="width x height of one image")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RequestLimits:
        """Read ``MAX_REQUEST_BYTES``, ``MAX_IMAGES_PER_REQUEST`` and ``MAX_IMAGE_PIXELS``."""
        environ = os.environ if environ is None else environ
        values = {field: environ[name] for field, name in ENV_NAMES.items() if name in environ}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_NAMES[str(error['loc'][0])]}={error['input']!r}: {error['msg']}"
                for error in exc.errors()
            )
            raise ValueError(f"invalid request limit: {problems}") from None

    def env_name(self, field: str) -> str:
        return ENV_NAMES[field]
