"""Image-image similarity for consistency between frames: embeddings and their cosines.

The model scorer embeds with its ViT-L/14 image tower (the embedding behind CLIP-Score and the
aesthetic head). A scorer without an image model (the heuristic) gets a clearly labelled
stand-in: the image's colour layout, an 8×8 RGB thumbnail centred on its own mean. It says
whether two frames share palette and composition, not whether they show the same things.
"""

from __future__ import annotations

import numpy as np
from framefleet.scoring.types import Scorer
from PIL import Image

COLOUR_LAYOUT = "colour layout (8x8 RGB thumbnail, mean-centred): a stand-in, not a semantic embedding"
VIT_L14 = "ViT-L/14 image embedding (the model scorer's CLIP tower)"
LAYOUT_SIZE = 8
FLAT = 1e-4  # below this norm the thumbnail is one colour (float rounding leaves a little)


def colour_layout_embeddings(images: list[Image.Image]) -> np.ndarray:
    """One unit vector per image: its 8×8 RGB thumbnail minus its mean (a flat image: zeros)."""
    rows = []
    for image in images:
        thumb = np.asarray(image.convert("RGB").resize((LAYOUT_SIZE, LAYOUT_SIZE), Image.Resampling.BOX),
                           dtype=np.float32).ravel() / 255.0
        centred = thumb - thumb.mean()
        norm = np.linalg.norm(centred)
        rows.append(centred / norm if norm > FLAT else np.zeros_like(centred))
    return np.stack(rows)


def embedding_name(scorer: Scorer) -> str:
    return VIT_L14 if hasattr(scorer, "clip_embeddings") else COLOUR_LAYOUT


def image_embeddings(scorer: Scorer, images: list[Image.Image]) -> np.ndarray:
    """Unit image embeddings from the scorer's own image model where it has one (one batch)."""
    if hasattr(scorer, "clip_embeddings"):
        return scorer.clip_embeddings(images).float().cpu().numpy()
    return colour_layout_embeddings(images)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two unit vectors (0 when either is the zero vector of a flat image)."""
    return float(np.clip(a @ b, -1.0, 1.0))
