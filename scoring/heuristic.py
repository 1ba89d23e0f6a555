"""Heuristic scorer: image statistics standing in where no model weights can be had.

It fills the same fields as the model scorer and is labelled ``heuristic`` in the manifest. It
does not read the prompt; the numbers are proxies, not the models' scores:
- pickscore  ← mean(sharpness, contrast, colourfulness)
- clip_score ← mean(exposure, colourfulness)
- aesthetic  ← mean(exposure, contrast, colourfulness)
with sharpness = RMS of the Laplacian (0.15 → 100), exposure = 100·(1 − 2·|mean luma − 0.5|),
contrast = luma std (0.25 → 100), colourfulness = Hasler & Süsstrunk M (100 → 100).
Consistency with the input images is the cosine of the labelled colour-layout stand-in
(scoring/similarity.py), so offline jobs weigh continuity as model-scored ones do.
"""

from __future__ import annotations

import numpy as np
from framefleet.scoring.similarity import colour_layout_embeddings
from framefleet.scoring.types import MetricScores, ScoreGroup
from PIL import Image


def image_statistics(image: Image.Image) -> dict[str, float]:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    luma = (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / 255.0
    laplacian = (4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:])
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    return {
        "sharpness": float(min(1.0, np.sqrt((laplacian**2).mean()) / 0.15) * 100),
        "exposure": float(max(0.0, 1 - 2 * abs(luma.mean() - 0.5)) * 100),
        "contrast": float(min(1.0, luma.std() / 0.25) * 100),
        "colourfulness": float(min(1.0, colourfulness / 100) * 100),
    }


def _mean(*values: float) -> float:
    return round(sum(values) / len(values), 3)


class HeuristicScorer:
    name = "heuristic"
    scores_consistency = True

    def setup(self) -> None:
        """Nothing to load."""

    def score(self, prompt: str, images: list[Image.Image],
              input_images: list[Image.Image] | None = None) -> list[MetricScores]:
        consistency = None
        if input_images:
            layouts = colour_layout_embeddings(list(images) + list(input_images))
            consistency = np.clip(layouts[:len(images)] @ layouts[len(images):].T, -1.0, 1.0)
        results = []
        for i, image in enumerate(images):
            s = image_statistics(image)
            results.append(MetricScores(
                pickscore=_mean(s["sharpness"], s["contrast"], s["colourfulness"]),
                clip_score=_mean(s["exposure"], s["colourfulness"]),
                aesthetic=_mean(s["exposure"], s["contrast"], s["colourfulness"]),
                consistency=None if consistency is None else [round(float(c), 6) for c in consistency[i]],
            ))
        return results

    def score_groups(self, groups: list[ScoreGroup]) -> list[list[MetricScores]]:
        """Image statistics have no batch to share: each frame's group is scored as it is alone."""
        return [self.score(*group) for group in groups]
