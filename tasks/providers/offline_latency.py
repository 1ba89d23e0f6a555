"""Simulated provider latency for the offline providers: a median, a lognormal spread and cold starts.

Each draw is a pure function of a key (job, frame, variation and attempt for an image; the frame
and the call number for the LLM), so a benchmark run replays exactly with the same job ids.
"""

from __future__ import annotations

import math
import random
import time

from framefleet.tasks.providers.base import GenerationStopped, StopCheck
from pydantic import BaseModel, Field

# How often a simulated wait polls its stop check.
STOP_POLL_S = 0.1


class LatencyProfile(BaseModel):
    model_config = {"frozen": True}

    median_s: float = Field(0.0, ge=0)
    sigma: float = Field(0.0, ge=0)  # lognormal spread; 0 = always the median
    cold_start_rate: float = Field(0.0, ge=0, le=1)  # share of calls that also pay a cold start
    cold_start_s: float = Field(0.0, ge=0)

    def draw(self, key: str) -> float:
        rng = random.Random(key)  # str seeds hash with SHA-512: the same in every process
        cold = rng.random() < self.cold_start_rate
        return self.median_s * math.exp(self.sigma * rng.gauss(0.0, 1.0)) + (self.cold_start_s if cold else 0.0)


def wait(seconds: float, should_stop: StopCheck | None = None) -> None:
    """Sleep ``seconds``; with a stop check, in steps of STOP_POLL_S, raising GenerationStopped
    as soon as the check gives a reason."""
    if should_stop is None:
        time.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if reason := should_stop():
            raise GenerationStopped(reason)
        time.sleep(min(STOP_POLL_S, remaining))
