"""Images as the fleet handles them: decoded once, the candidates' contact-sheet thumbnails, and the
small copies a vision model is sent."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

THUMB_W = 224  # a candidate's tile on the contact sheet


def decode_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def candidate_size(aspect_ratio: str) -> tuple[int, int]:
    w, h = (int(p) for p in aspect_ratio.split(":"))
    return THUMB_W, max(32, round(THUMB_W * h / w))


def candidate_thumbnail(image: Image.Image, aspect_ratio: str) -> bytes:
    """A candidate's thumbnail as the sheet shows it, as PNG (lossless: the sheet is the same)."""
    out = io.BytesIO()
    fitted(image, candidate_size(aspect_ratio)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def fitted(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Reduced by a whole factor first (a cheap box filter), then fitted: faster than one bilinear
    pass from the full size, and no worse to look at."""
    factor = max(1, min(image.width // size[0], image.height // size[1]))
    return ImageOps.fit(image.reduce(factor) if factor > 1 else image, size, method=Image.Resampling.BILINEAR)


def downsized_jpeg(image: Image.Image, long_side: int) -> bytes:
    """The image with its longer side at most ``long_side``, as JPEG (a vision model's input: a
    few tens of KB instead of a full-size PNG)."""
    small = image.copy()
    small.thumbnail((long_side, long_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=85)
    return out.getvalue()
