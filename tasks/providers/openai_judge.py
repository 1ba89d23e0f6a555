"""The vision judge on OpenAI (or any OpenAI-compatible vision model via OPENAI_BASE_URL).

One chat-completions request per order: the frame's prompt, the input images and the two
candidates as image content parts (JPEG data URLs at "low" detail: the model reads them at 512 px,
85 tokens each), and a structured reply (``JudgeReply``). It asks through ``OpenAIChat``, so it
spends the fleet's OpenAI budget like the enhancement does (one limiter, 429s pause the fleet);
its waits are capped by ``judge_max_wait_s`` and each request by ``judge_timeout_s``. No
temperature is sent: reasoning models accept only their default.
"""

from __future__ import annotations

import base64

from framefleet.config.settings import Settings
from framefleet.tasks.providers.judges import (
    JUDGE_COUNTERS,
    LOW_DETAIL_IMAGE_TOKENS,
    JudgeError,
    JudgeReply,
    JudgeRequest,
)
from framefleet.tasks.providers.openai_llm import OpenAIChat

JUDGE_INSTRUCTIONS = (
    "You are the continuity supervisor of an AI video studio. Two candidate images, A and B, were generated for "
    "the same still frame of a storyboard, from the same prompt and the same input images. Compare them on: "
    "continuity with the input images (the same characters: face, hair, clothing; the same objects and products; "
    "the same setting, palette and style as the reference image and the previous frame), adherence to the frame's "
    "prompt, and visible defects (malformed hands or faces, extra limbs, garbled text, artefacts). Continuity "
    "matters most, then prompt adherence, then defects. Answer A, B or tie for each criterion, say which image a "
    "storyboard artist would keep, and give the reason in one or two sentences. Judge the images, not their order."
)


def image_part(jpeg: bytes) -> dict:
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    return {"type": "image_url", "image_url": {"url": url, "detail": "low"}}


def judge_messages(request: JudgeRequest) -> list[dict]:
    parts: list[dict] = [{"type": "text", "text": f"Frame prompt:\n{request.prompt}"}]
    if not request.inputs:
        parts.append({"type": "text", "text": "This frame has no input images: judge prompt adherence and defects."})
    for image in request.inputs:
        parts += [{"type": "text", "text": f"Input, the {image.label}:"}, image_part(image.jpeg)]
    parts += [{"type": "text", "text": "Candidate A:"}, image_part(request.first),
              {"type": "text", "text": "Candidate B:"}, image_part(request.second)]
    return [{"role": "system", "content": JUDGE_INSTRUCTIONS}, {"role": "user", "content": parts}]


class OpenAIFrameJudge:
    name = "openai"

    def __init__(self, settings: Settings):
        self.model = settings.judge_model
        self.chat = OpenAIChat(settings, model=settings.judge_model, timeout_s=settings.judge_timeout_s,
                               max_wait=("judge_max_wait_s", settings.judge_max_wait_s), counters=JUDGE_COUNTERS,
                               failure=JudgeError, image_tokens=LOW_DETAIL_IMAGE_TOKENS)

    @property
    def usage(self) -> dict[str, int]:
        return self.chat.usage

    def compare(self, request: JudgeRequest) -> JudgeReply:
        return self.chat.ask(judge_messages(request), JudgeReply)
