"""What the vision judge is, whichever model plays it (providers: offline, OpenAI).

The judge compares two candidates of one frame, shown as A and B, given the frame's prompt and its
input images (the reference, the previous frame), on continuity, prompt adherence and visible
defects, and says which one it would keep (tasks/steps/judge.py asks it in both orders).
"""

from __future__ import annotations

import io
import itertools
import time
from typing import Literal, Protocol

import numpy as np
from framefleet.scoring.similarity import colour_layout_embeddings
from framefleet.tasks.providers.offline_latency import LatencyProfile
from PIL import Image
from pydantic import BaseModel, Field

# An image sent at OpenAI's "low" detail is read at 512 × 512 and counted as this many tokens.
LOW_DETAIL_IMAGE_TOKENS = 85
JUDGE_COUNTERS = ("judge_calls", "judge_prompt_tokens", "judge_completion_tokens", "judge_rate_limit_waits",
                  "judge_rate_limit_wait_ms")

Choice = Literal["A", "B", "tie"]


class JudgeImage(BaseModel):
    label: str  # "reference image" | "previous frame"
    jpeg: bytes


class JudgeRequest(BaseModel):
    prompt: str  # the prompt the candidates were generated from
    inputs: list[JudgeImage] = []
    first: bytes  # candidate A (JPEG)
    second: bytes  # candidate B (JPEG)


class JudgeReply(BaseModel):
    """The judge's structured answer for one order."""

    continuity: Choice = Field(description="which keeps the characters, objects and setting of the input images")
    prompt_adherence: Choice = Field(description="which shows what the frame's prompt asks for")
    defects: Choice = Field(description="which has fewer visible defects (anatomy, text, artefacts)")
    preferred: Choice = Field(description="which image a storyboard artist would keep")
    reason: str = Field(description="one or two sentences")


class JudgeError(Exception):
    """The judge gave no usable answer: the score order stands."""


class FrameJudge(Protocol):
    name: str
    model: str
    usage: dict[str, int]  # JUDGE_COUNTERS

    def compare(self, request: JudgeRequest) -> JudgeReply: ...


def _image(jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg)).convert("RGB")


class OfflineFrameJudge:
    """The embedded stand-in, clearly not a vision model: it prefers the candidate whose colour
    layout (scoring/similarity.py) is closer to the input images', and sees no difference without
    inputs. It never looks at the order, so its two answers always agree."""

    name = "offline"
    model = "offline: colour-layout consistency with the input images (a stand-in, not a vision model)"
    TIE = 0.01  # cosine differences below this are no preference

    def __init__(self, latency: LatencyProfile | float = 0.0, context: str = ""):
        self.latency = latency if isinstance(latency, LatencyProfile) else LatencyProfile(median_s=latency)
        self.context = context
        self._calls = itertools.count()
        self.usage = {"judge_calls": 0}

    def compare(self, request: JudgeRequest) -> JudgeReply:
        self.usage["judge_calls"] += 1
        time.sleep(self.latency.draw(f"judge/{self.context}/{next(self._calls)}"))
        if not request.inputs:
            return JudgeReply(continuity="tie", prompt_adherence="tie", defects="tie", preferred="tie",
                              reason="offline judge: no input images to compare with")
        layouts = colour_layout_embeddings([_image(request.first), _image(request.second)]
                                           + [_image(i.jpeg) for i in request.inputs])
        a, b = (float(np.mean(layouts[2:] @ layouts[k])) for k in (0, 1))
        choice: Choice = "tie" if abs(a - b) < self.TIE else "A" if a > b else "B"
        return JudgeReply(continuity=choice, prompt_adherence="tie", defects="tie", preferred=choice,
                          reason=f"offline judge: colour-layout similarity to the inputs A {a:.2f}, B {b:.2f}")
