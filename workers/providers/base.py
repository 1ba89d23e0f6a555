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


class ImageGenerator(Protocol):
    name: str

    def generate(self, request: ImageRequest) -> bytes: ...
