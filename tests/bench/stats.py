"""Summaries of benchmark measurements, and the per-job measures read from a manifest.

Shared by the load benchmark and anyone checking the scheduler's figures.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import numpy as np


class Summary(NamedTuple):
    count: int
    mean: float
    p50: float
    p95: float
    max: float


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear between samples; nan for no samples."""
    values = list(values)
    return float(np.percentile(values, q)) if values else math.nan


def summarize(values: Iterable[float]) -> Summary:
    values = list(values)
    if not values:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    return Summary(len(values), float(np.mean(values)), percentile(values, 50), percentile(values, 95),
                   float(np.max(values)))


def wave_bound(unloaded_s: float, jobs: int, slots: int, images_per_frame: int) -> float:
    """Mean job latency of the wave schedule: ``slots // images_per_frame`` jobs run at a time,
    each wave one unloaded job long, so the job in wave k finishes at k × unloaded."""
    per_wave = max(1, slots // images_per_frame)
    return unloaded_s * sum(job // per_wave + 1 for job in range(jobs)) / jobs


# Per-job measures from a manifest (README, "Manifest schema") ---------------------------------
def job_latency(manifest: dict) -> float:
    """Submitted → finished."""
    return manifest["timings"]["finished"] - manifest["timings"]["submitted"]


def images_stored(manifest: dict) -> int:
    return sum(1 for frame in manifest["frames"] for variation in frame["variations"] if variation.get("key"))


def _generation_start(frame: dict) -> float | None:
    starts = [span[0] for span in frame["timings"]["variations"]]
    return min(starts) if starts else None


def frame_times(manifest: dict) -> list[float]:
    """Per frame, its own work: first generation start → score end (the slowest kept variation
    plus scoring; queue waits before the first generation are left out)."""
    times = []
    for frame in manifest["frames"]:
        start, score = _generation_start(frame), frame["timings"]["score"]
        if start is not None and score:
            times.append(score[1] - start)
    return times


def round_start_spreads(manifest: dict) -> list[float]:
    """Per generation round (a frame's variations of one prompt source), its first generation
    start → its last: how long the worker took to start the round's messages."""
    spreads = []
    for frame in manifest["frames"]:
        starts: dict[str, list[float]] = {}
        for variation in frame["variations"]:
            if variation.get("timing"):
                starts.setdefault(variation.get("prompt_source", "enhanced"), []).append(variation["timing"][0])
        spreads += [max(s) - min(s) for s in starts.values() if len(s) > 1]
    return spreads


def scheduling_gaps(manifest: dict) -> list[float]:
    """Per frame after the first, in plan order (each chains from the one before): the previous
    frame's score end → this frame's first generation start."""
    gaps = []
    for previous, frame in zip(manifest["frames"], manifest["frames"][1:]):
        start, score = _generation_start(frame), previous["timings"]["score"]
        if start is not None and score:
            gaps.append(start - score[1])
    return gaps


HANDOVER_PARTS = ("chord join", "scoring", "selection and send", "delivery")


def handover_parts(manifest: dict) -> dict[str, list[float]]:
    """Per frame after the first, where the hand-over from the frame before it goes: that frame's
    last generation end → its score start (chord join) → its score end (scoring) → this frame's
    round sent (selection and send) → this frame's first generation start (delivery)."""
    parts: dict[str, list[float]] = {name: [] for name in HANDOVER_PARTS}
    for previous, frame in zip(manifest["frames"], manifest["frames"][1:]):
        ends = [span[1] for span in previous["timings"]["variations"]]
        score, enqueued, start = previous["timings"]["score"], frame["timings"].get("enqueued"), _generation_start(frame)
        if not ends or not score or enqueued is None or start is None:
            continue
        durations = (score[0] - max(ends), score[1] - score[0], enqueued - score[1], start - enqueued)
        for name, duration in zip(HANDOVER_PARTS, durations):
            parts[name].append(duration)
    return parts


def queue_waits(manifest: dict) -> list[float]:
    return [v["queue_wait"] for frame in manifest["frames"] for v in frame["variations"]
            if v.get("queue_wait") is not None]
