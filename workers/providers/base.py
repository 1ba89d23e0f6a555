"""What every image provider takes and raises."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel


class ImageGenerationError(Exception):
    """An expected provider failure: it becomes a failure record, not a crash."""


class ImageRequest(BaseModel):
    prompt: str
    aspect_ratio: str
    input_images: list[bytes] = []
    variation: int
    attempt: int = 0
    seed: int = 0
    model: str | None = None  # the job's image model (real providers)
    job_id: str | None = None
    frame: str | None = None
    # Names this paid call: a redelivered task with the same key resumes the same prediction.
    ledger_key: str | None = None


class ImageGenerator(Protocol):
    name: str

    def generate(self, request: ImageRequest) -> bytes: ...
