"""The two agents on OpenAI (or any OpenAI-compatible server via OPENAI_BASE_URL).

Structured output is parsed into pydantic models by the official client. A reply that does not
parse is asked again once; a second bad reply raises EnhancementError, and the enhancement
fallback (original prompt, single image) applies.

Budgets: every request first takes a request slot and its estimated tokens from a fleet-wide
limiter in Redis (``openai_requests_per_minute``, ``openai_tokens_per_minute``). A 429 pauses the
whole fleet for as long as ``retry-after-ms`` / ``Retry-After`` / ``x-ratelimit-reset-*`` say (at
most ``provider_max_pause_s``; an unusable value pauses briefly), and the request queues again;
only when the enhancement's total wait passes ``openai_rate_limit_max_wait_s`` does it raise
RateLimitDeadline (the caller's fallback). Every wait is counted in ``usage``. 5xx and
network errors are retried ``openai_max_retries`` times with backoff; the client's own retries are
off, since they would bypass the limiter.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

import httpx
import openai
from framefleet.config.settings import Settings
from framefleet.tasks.job.redis import state_client
from framefleet.tasks.providers.agents import DIMENSIONS, Critique
from framefleet.tasks.providers.ratelimit import (
    DEFAULT_PAUSE_S,
    FleetRateLimiter,
    RateLimitDeadline,
    account_key,
    count_request,
    outcome,
    requested_pause,
    retry_after_seconds,
)
from framefleet.tasks.runtime.tracing import provider_call
from pydantic import BaseModel, Field, ValidationError

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.openai.com/v1"

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


DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATIONS = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    if not DURATIONS.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * UNITS[u] for n, u in DURATION.findall(text))


def _milliseconds(text: str) -> float:
    return float(text) / 1000


def retry_delay(headers: httpx.Headers) -> float:
    """How long a 429 asks to wait: retry-after-ms, retry-after, else the reset of each exhausted
    budget (``x-ratelimit-reset-requests`` / ``-tokens``, durations like "6m0s" or "20ms"). An
    unusable value (inf, nan, < 0, garbage) is skipped, and with nothing usable left the wait is
    DEFAULT_PAUSE_S; never capped here (the limiter's pause caps)."""
    for name, parse in (("retry-after-ms", _milliseconds), ("retry-after", retry_after_seconds)):
        seconds = requested_pause(headers.get(name), f"OpenAI {name}", parse)
        if seconds is not None:
            return seconds
    resets = [requested_pause(headers.get(f"x-ratelimit-reset-{budget}"), f"OpenAI x-ratelimit-reset-{budget}",
                              _duration)
              for budget in ("requests", "tokens") if headers.get(f"x-ratelimit-remaining-{budget}") == "0"]
    return max((r for r in resets if r is not None), default=DEFAULT_PAUSE_S) or DEFAULT_PAUSE_S


def fleet_limiter(settings: Settings) -> FleetRateLimiter:
    key = settings.openai_api_key.get_secret_value()
    account = account_key(os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL), key)
    return FleetRateLimiter(state_client(), f"openai:{account}", settings.openai_requests_per_minute,
                            settings.openai_rate_window_s, token_limit=settings.openai_tokens_per_minute,
                            max_pause_s=settings.provider_max_pause_s)


class OpenAIPromptAgents:
    name = "openai"

    def __init__(self, settings: Settings):
        self.settings = settings
        # base_url comes from OPENAI_BASE_URL when set (the client reads it).
        self.client = openai.OpenAI(api_key=settings.openai_api_key.get_secret_value(),
                                    timeout=settings.openai_timeout_s, max_retries=0,
                                    http_client=openai.DefaultHttpxClient(event_hooks={"response": [
                                        lambda response: count_request("openai", outcome(response.status_code))]}))
        self.limiter = fleet_limiter(settings)
        self.usage = {"llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "rate_limit_waits": 0, "rate_limit_wait_ms": 0}
        self.waited_s = 0.0

    def _take_slot(self, tokens: int) -> None:
        """Queue for the fleet's budget; the enhancement's total wait is capped."""
        left = self.settings.openai_rate_limit_max_wait_s - self.waited_s
        try:
            waited = self.limiter.acquire(tokens=tokens, timeout_s=max(0.0, left))
        except RateLimitDeadline as error:
            raise RateLimitDeadline(f"rate limited: OpenAI budget still full after waiting {self.waited_s:.0f}s "
                                    f"(openai_rate_limit_max_wait_s {self.settings.openai_rate_limit_max_wait_s:g})"
                                    ) from error
        if waited > 0:
            self.waited_s += waited
            self.usage["rate_limit_waits"] += 1
            self.usage["rate_limit_wait_ms"] += round(waited * 1000)

    def _complete(self, messages: list[dict], reply_model: type[BaseModel]):
        """One completion within the fleet's budget: 429s queue again, 5xx are retried."""
        # Tokens as the provider counts them before answering: the prompt (about 4 characters a
        # token) plus the completion it may write.
        tokens = len(json.dumps(messages)) // 4 + self.settings.openai_completion_tokens_estimate
        server_errors = 0
        while True:
            self._take_slot(tokens)
            try:
                with provider_call("openai chat.completions", **{"gen_ai.request.model": self.settings.openai_model}):
                    return self.client.chat.completions.parse(
                        model=self.settings.openai_model, temperature=self.settings.openai_temperature,
                        messages=messages, response_format=reply_model)
            except openai.RateLimitError as error:
                if error.code == "insufficient_quota":  # out of credit: waiting will not help
                    raise
                delay = self.limiter.pause(retry_delay(error.response.headers))
                log.info("OpenAI 429 (%s): the fleet waits %.1fs", error.code, delay)
            except (openai.APIConnectionError, openai.InternalServerError) as error:
                if isinstance(error, openai.APIConnectionError):  # no answer: the response hook saw nothing
                    count_request("openai", "error")
                server_errors += 1
                if server_errors > self.settings.openai_max_retries:
                    raise
                time.sleep(min(30.0, 0.5 * 2 ** server_errors))

    def _ask(self, system: str, user: str, reply_model: type[BaseModel]) -> BaseModel:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        for attempt in (1, 2):
            started = time.monotonic()
            try:
                completion = self._complete(messages, reply_model)
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
