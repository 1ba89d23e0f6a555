"""What every image provider takes and raises."""

from __future__ import annotations

from typing import Callable, Protocol

from pydantic import BaseModel


class ImageGenerationError(Exception):
    """An expected provider failure: it becomes a failure record, not a crash."""


class GenerationStopped(ImageGenerationError):
    """The caller asked the provider to stop (e.g. a straggler cut); any paid work was cancelled."""


# Polled by a provider while it waits for an image: a reason string stops the generation.
StopCheck = Callable[[], "str | None"]


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

    def generate(self, request: ImageRequest, should_stop: StopCheck | None = None) -> bytes:
        """The image as PNG bytes. ``should_stop`` is polled at least once a second while waiting;
        when it returns a reason, in-flight paid work is cancelled and GenerationStopped raised."""
        ...
