"""Procedural image generator: the embedded default, no network and no key.

Deterministic for (prompt, variation, input images). The newest input image shows through the
background and every input appears as an inset thumbnail, so the chaining is visible. The
simulated latency is drawn per (job, frame, variation, attempt) from a LatencyProfile.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
from typing import Callable

from framefleet.tasks.providers.base import ImageGenerationError, ImageRequest, StopCheck
from framefleet.tasks.providers.offline_latency import LatencyProfile, wait
from PIL import Image, ImageDraw, ImageFilter, ImageOps

LONG_SIDE = 512


def canvas_size(aspect_ratio: str) -> tuple[int, int]:
    w, h = (int(part) for part in aspect_ratio.split(":"))
    if w >= h:
        return LONG_SIDE, max(8, round(LONG_SIDE * h / w))
    return max(8, round(LONG_SIDE * w / h)), LONG_SIDE


def _seed(request: ImageRequest) -> int:
    digest = hashlib.sha256(request.prompt.encode())
    digest.update(str(request.variation).encode())
    for image in request.input_images:
        digest.update(hashlib.sha256(image).digest())
    return int.from_bytes(digest.digest()[:8], "big")


def _palette(prompt: str) -> list[tuple[int, int, int]]:
    digest = hashlib.sha256(prompt.encode()).digest()
    return [tuple(digest[i : i + 3]) for i in range(0, 18, 3)]  # type: ignore[misc]


class OfflineImageGenerator:
    name = "offline"

    def __init__(self, latency: LatencyProfile | float = 0.0, failure_rate: float = 0.0,
                 call_log: Callable[[ImageRequest], None] | None = None):
        # A number is a fixed latency in seconds.
        self.latency = latency if isinstance(latency, LatencyProfile) else LatencyProfile(median_s=latency)
        self.failure_rate = failure_rate
        # Every call, for the fault tests' "no image paid twice" check (the offline stand-in for
        # a provider's bill).
        self.call_log = call_log

    def latency_s(self, request: ImageRequest) -> float:
        return self.latency.draw(f"image/{request.job_id}/{request.frame}/{request.variation}/{request.attempt}")

    def generate(self, request: ImageRequest, should_stop: StopCheck | None = None) -> bytes:
        started = time.monotonic()
        if self.call_log is not None and request.job_id:
            self.call_log(request)
        seed = _seed(request)
        fails = self.failure_rate and random.Random(seed + 7919 * request.attempt).random() < self.failure_rate
        latency = self.latency_s(request)
        # The latency is the whole call, as a provider's is. A provider computes remotely while
        # the worker waits; the rendering stands in for that computation, so it runs mid-call:
        # at the start it would take CPU from the worker's next deliveries (the moment a round
        # starts), at the end from the hand-over to scoring.
        wait(latency / 2, should_stop)
        png = None if fails else self._render(request, seed)
        wait(max(0.0, latency - (time.monotonic() - started)), should_stop)
        if png is None:
            raise ImageGenerationError(f"simulated provider failure (variation {request.variation})")
        return png

    def _render(self, request: ImageRequest, seed: int) -> bytes:
        rng = random.Random(seed)
        size = canvas_size(request.aspect_ratio)
        palette = _palette(request.prompt)

        gradient = Image.linear_gradient("L").resize(size).rotate(rng.choice((0, 90, 180, 270)))
        image = Image.composite(Image.new("RGB", size, palette[0]), Image.new("RGB", size, palette[1]), gradient)
        inputs = [ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB") for data in request.input_images]
        if inputs:
            image = Image.blend(image, ImageOps.fit(inputs[-1], size), 0.55)

        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(4, 10)):
            x, y = rng.randrange(size[0]), rng.randrange(size[1])
            r = rng.randint(size[1] // 12, size[1] // 3)
            colour = rng.choice(palette[2:])
            if rng.random() < 0.5:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
            else:
                draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(rng.choice((0, 0, 1, 2, 4))))

        thumb_h = size[1] // 5
        for slot, source in enumerate(inputs):
            thumb = ImageOps.fit(source, (thumb_h * size[0] // size[1], thumb_h))
            x, y = 6 + slot * (thumb.width + 6), size[1] - thumb_h - 6
            image.paste(ImageOps.expand(thumb, border=2, fill="white"), (x - 2, y - 2))

        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()
