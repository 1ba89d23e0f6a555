"""Image-model adapters: one declarative registry (image_models.json) behind one factory.

Each entry says how a Replicate model names its inputs: the prompt field, the input-image field
and whether it takes a list, the aspect-ratio field, the seed field (null: the model has no
seed and varies by itself), the output-format field, and fixed inputs; and optionally the
deployment ("owner/name") that runs the model, where its predictions are then created.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from framefleet.config.settings import REPLICATE_NAME, Settings
from pydantic import BaseModel, ConfigDict, Field

REGISTRY_FILE = Path(__file__).with_name("image_models.json")


class OutputFormat(BaseModel):
    field: str
    value: str


class ImageModelAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    images: str | None
    multiple_images: bool
    aspect_ratio: str | None
    seed: str | None
    output_format: OutputFormat | None
    fixed: dict[str, Any] = {}
    deployment: str | None = Field(None, pattern=REPLICATE_NAME)

    def build_input(self, prompt: str, images: list, aspect_ratio: str, seed: int) -> dict[str, Any]:
        """The model's input: with several input images, a single-image model gets the newest."""
        body: dict[str, Any] = {**self.fixed, self.prompt: prompt}
        if self.images and images:
            body[self.images] = list(images) if self.multiple_images else images[-1]
        if self.aspect_ratio:
            body[self.aspect_ratio] = aspect_ratio
        if self.seed:
            body[self.seed] = seed
        if self.output_format:
            body[self.output_format.field] = self.output_format.value
        return body


@lru_cache(maxsize=1)
def image_model_registry() -> dict[str, ImageModelAdapter]:
    raw = json.loads(REGISTRY_FILE.read_text())
    return {name: ImageModelAdapter.model_validate(entry) for name, entry in raw.items()}


def replicate_deployment(model: str, settings: Settings) -> str | None:
    """Where predictions of ``model`` are created: ``FRAMEFLEET_REPLICATE_DEPLOYMENT`` for the
    fleet's model (``FRAMEFLEET_REPLICATE_MODEL``), else the model's registry entry; None: the
    public model itself."""
    if model == settings.replicate_model and settings.replicate_deployment:
        return settings.replicate_deployment
    return image_model_adapter(model).deployment


def image_model_adapter(name: str) -> ImageModelAdapter:
    registry = image_model_registry()
    if name not in registry:
        raise ValueError(f"image_model: no adapter for {name!r} (have {sorted(registry)})")
    return registry[name]
