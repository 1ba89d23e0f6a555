"""The two agents on OpenAI (or any OpenAI-compatible server via OPENAI_BASE_URL).

Structured output is parsed into pydantic models by the official client. A reply that does not
parse is asked again once; a second bad reply raises EnhancementError, and the enhancement
fallback (original prompt, single image) applies. 429 and 5xx are retried by the client itself,
honouring Retry-After (``openai_max_retries``).
"""

from __future__ import annotations

import logging
import time

import openai
from pydantic import BaseModel, Field, ValidationError

from config.settings import Settings
from tasks.enhancement import DIMENSIONS, Critique

log = logging.getLogger(__name__)

CREATIVE_DIRECTOR = (
    "You are the Creative Director of an AI video studio. You rewrite prompts for single still frames "
    "of a video storyboard (start and end frames of clips, and scene reference images) for a text-to-image "
    "model. Keep the subject, action and every continuity detail of the original. Add concrete visual detail: "
    "shot type and camera angle, lens, lighting, composition, colour palette, style, materials and textures. "
    "Describe one frozen moment, not motion over time. When the Prompt Engineer's critique is given, act on "
    "every point of it. Return the rewritten prompt and the list of changes you made."
)
PROMPT_ENGINEER = (
    "You are the Prompt Engineer of an AI video studio. You review a prompt for a single still frame of a "
    "video storyboard. Score it 0-100 on each dimension: completeness (subject, setting, shot, lens, lighting, "
    "composition, palette, style are all stated), specificity (concrete nouns, materials, textures; no vague "
    "words), professionalism (clear, production-ready wording), cinematography (camera and light are "
    "purposeful), brand_alignment (one consistent style and palette that keeps continuity with the other "
    "frames). Give the overall score (0-100), a concrete critique the Creative Director must act on, and the "
    "missing aspects."
)


class CreativeDirectorReply(BaseModel):
    prompt: str = Field(min_length=1)
    changes: list[str] = []


class PromptEngineerReply(BaseModel):
    completeness: float = Field(ge=0, le=100)
    specificity: float = Field(ge=0, le=100)
    professionalism: float = Field(ge=0, le=100)
    cinematography: float = Field(ge=0, le=100)
    brand_alignment: float = Field(ge=0, le=100)
    overall: float = Field(ge=0, le=100)
    critique: str
    missing: list[str] = []


class EnhancementError(Exception):
    """The LLM gave no usable reply: the enhancement fallback applies."""


class OpenAIPromptAgents:
    name = "openai"

    def __init__(self, settings: Settings):
        self.settings = settings
        # base_url comes from OPENAI_BASE_URL when set (the client reads it).
        self.client = openai.OpenAI(api_key=settings.openai_api_key.get_secret_value(),
                                    timeout=settings.openai_timeout_s, max_retries=settings.openai_max_retries)
        self.usage = {"llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def _ask(self, system: str, user: str, reply_model: type[BaseModel]) -> BaseModel:
        for attempt in (1, 2):
            started = time.monotonic()
            try:
                completion = self.client.chat.completions.parse(
                    model=self.settings.openai_model, temperature=self.settings.openai_temperature,
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                    response_format=reply_model,
                )
            except (ValidationError, openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError,
                    ValueError) as error:
                log.warning("unparsable %s reply (attempt %s): %s", reply_model.__name__, attempt, error)
                self.usage["llm_calls"] += 1
                continue
            except openai.OpenAIError as error:
                raise EnhancementError(f"{reply_model.__name__}: {error}") from error
            self.usage["llm_calls"] += 1
            if completion.usage:
                self.usage["prompt_tokens"] += completion.usage.prompt_tokens
                self.usage["completion_tokens"] += completion.usage.completion_tokens
            parsed = completion.choices[0].message.parsed
            log.debug("%s answered in %.2fs", reply_model.__name__, time.monotonic() - started)
            if parsed is not None:
                return parsed
            log.warning("%s reply without parsed content (attempt %s)", reply_model.__name__, attempt)
        raise EnhancementError(f"{reply_model.__name__}: no parsable reply after 2 attempts")

    def creative_director(self, original: str, current: str, critique: Critique | None) -> str:
        user = f"Original prompt:\n{original}\n"
        if critique is not None:
            user += f"\nCurrent prompt:\n{current}\n\nPrompt Engineer's critique (score {critique.overall:.0f}):\n"
            user += critique.critique
            if critique.missing:
                user += "\nMissing: " + ", ".join(critique.missing)
        reply = self._ask(CREATIVE_DIRECTOR, user, CreativeDirectorReply)
        return reply.prompt.strip()

    def prompt_engineer(self, prompt: str) -> Critique:
        reply = self._ask(PROMPT_ENGINEER, f"Prompt to review:\n{prompt}", PromptEngineerReply)
        return Critique(scores={d: getattr(reply, d) for d in DIMENSIONS}, overall=reply.overall,
                        critique=reply.critique, missing=reply.missing)
