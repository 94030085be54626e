"""Response models of the HTTP API; BentoML turns them into the OpenAPI schema."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ClassScore(BaseModel):
    label: str = Field(description="class name")
    score: float = Field(ge=0.0, le=1.0, description="softmax probability")


class Prediction(BaseModel):
    file: str = Field(description="name of the uploaded file, as the client sent it")
    label: str = Field(description="most probable class name")
    class_id: int = Field(ge=0, description="index of the most probable class")
    score: float = Field(ge=0.0, le=1.0, description="softmax probability of that class")
    top5: list[ClassScore] = Field(description="the most probable classes, best first (at most 5)")


class PredictResponse(BaseModel):
    model: str = Field(description="export name from the manifest")
    version: str = Field(description="export version from the manifest")
    predictions: list[Prediction] = Field(description="one prediction per uploaded image, in order")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, for example 'invalid_image'")
    message: str = Field(description="what failed and what is allowed")
    item: str | None = Field(default=None, description="the file or part the error is about")


class ErrorResponse(BaseModel):
    error: ErrorDetail
