"""What a scorer returns for one image: each metric on 0-100, or None where it failed."""

from __future__ import annotations

from typing import NamedTuple, Protocol

from PIL import Image
from pydantic import BaseModel

# The 0-100 metrics a scorer may fill (consistency is kept as cosines and counted apart). HPS is
# computed only where the model scorer was asked to load it (scoring/models.py).
METRICS = ("pickscore", "clip_score", "aesthetic", "hps")


class MetricScores(BaseModel):
    pickscore: float | None = None
    clip_score: float | None = None
    aesthetic: float | None = None
    hps: float | None = None
    # Cosine similarity to each of the frame's input images (reference, previous frame).
    consistency: list[float] | None = None
    pickscore_raw: float | None = None
    hps_raw: float | None = None
    errors: dict[str, str] = {}


class ScoreGroup(NamedTuple):
    """One frame's round for ``Scorer.score_groups``: its prompt, candidates and input images."""

    prompt: str
    images: list[Image.Image]
    input_images: list[Image.Image] | None = None


class Scorer(Protocol):
    """Load once (``setup``), then score a frame's images in one call (``score``), or several
    frames' in one pass (``score_groups``: each group gets what ``score`` gives it alone; the
    models up to the rounding a matmul's batch shape brings)."""

    name: str
    # Whether ``score`` compares the images with the frame's input images (consistency): the
    # caller fetches and decodes those only for a scorer that uses them.
    scores_consistency: bool

    def setup(self) -> None: ...

    def score(self, prompt: str, images: list[Image.Image],
              input_images: list[Image.Image] | None = None) -> list[MetricScores]: ...

    def score_groups(self, groups: list[ScoreGroup]) -> list[list[MetricScores]]: ...
