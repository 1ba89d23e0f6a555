"""The two agents on OpenAI (or any OpenAI-compatible server via OPENAI_BASE_URL), through the
fleet's one way of asking OpenAI (``OpenAIChat``, which the vision judge shares).

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
import threading
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


# The cost ledger's counters of one kind of call: (calls, prompt tokens, completion tokens, waits, wait ms).
ENHANCEMENT_COUNTERS = ("llm_calls", "prompt_tokens", "completion_tokens", "rate_limit_waits", "rate_limit_wait_ms")


def estimated_tokens(messages: list[dict], per_image: int) -> int:
    """The prompt's tokens as the limiter counts them: text at about 4 characters a token, each
    image part at ``per_image`` (its data URL is bytes the model never reads as text)."""
    images = 0
    text_only = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            images += sum(part.get("type") == "image_url" for part in content)
            content = [part for part in content if part.get("type") != "image_url"]
        text_only.append({**message, "content": content})
    return len(json.dumps(text_only)) // 4 + images * per_image


class OpenAIChat:
    """Structured-output completions of one model within the fleet's OpenAI budget: every request
    takes its slot from the fleet-wide limiter, 429s pause the fleet and queue again, 5xx and
    network errors are retried, and an unparsable reply is asked again once. Thread-safe: its
    counters (``usage``, named by ``counters``) are shared by the threads that use it."""

    def __init__(self, settings: Settings, *, model: str, timeout_s: float, max_wait: tuple[str, float],
                 temperature: float | None = None, counters: tuple[str, ...] = ENHANCEMENT_COUNTERS,
                 failure: type[Exception] = RuntimeError, image_tokens: int = 0):
        self.settings, self.model, self.temperature = settings, model, temperature
        self.max_wait_setting, self.max_wait_s = max_wait  # (the setting's name, its value)
        self.failure, self.image_tokens = failure, image_tokens
        # base_url comes from OPENAI_BASE_URL when set (the client reads it).
        self.client = openai.OpenAI(api_key=settings.openai_api_key.get_secret_value(), timeout=timeout_s,
                                    max_retries=0,
                                    http_client=openai.DefaultHttpxClient(event_hooks={"response": [
                                        lambda response: count_request("openai", outcome(response.status_code))]}))
        self.limiter = fleet_limiter(settings)
        self.calls, self.prompt_tokens, self.completion_tokens, self.waits, self.wait_ms = counters
        self.usage = dict.fromkeys(counters, 0)
        self.waited_s = 0.0
        self._lock = threading.Lock()

    def _count(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self.usage[getattr(self, name)] += amount

    def _take_slot(self, tokens: int) -> None:
        """Queue for the fleet's budget; the total wait of this chat is capped at ``max_wait_s``."""
        left = self.max_wait_s - self.waited_s
        try:
            waited = self.limiter.acquire(tokens=tokens, timeout_s=max(0.0, left))
        except RateLimitDeadline as error:
            raise RateLimitDeadline(f"rate limited: OpenAI budget still full after waiting {self.waited_s:.0f}s "
                                    f"({self.max_wait_setting} {self.max_wait_s:g})") from error
        if waited > 0:
            with self._lock:
                self.waited_s += waited
            self._count(waits=1, wait_ms=round(waited * 1000))

    def _complete(self, messages: list[dict], reply_model: type[BaseModel]):
        """One completion within the fleet's budget: 429s queue again, 5xx are retried."""
        # Tokens as the provider counts them before answering: the prompt plus the completion it may write.
        tokens = estimated_tokens(messages, self.image_tokens) + self.settings.openai_completion_tokens_estimate
        options = {} if self.temperature is None else {"temperature": self.temperature}
        server_errors = 0
        while True:
            self._take_slot(tokens)
            try:
                with provider_call("openai chat.completions", **{"gen_ai.request.model": self.model}):
                    return self.client.chat.completions.parse(model=self.model, messages=messages,
                                                              response_format=reply_model, **options)
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

    def ask(self, messages: list[dict], reply_model: type[BaseModel]) -> BaseModel:
        """The parsed reply; ``failure`` when none parses after two attempts or the API fails."""
        for attempt in (1, 2):
            started = time.monotonic()
            try:
                completion = self._complete(messages, reply_model)
            except (ValidationError, openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError,
                    ValueError) as error:
                log.warning("unparsable %s reply (attempt %s): %s", reply_model.__name__, attempt, error)
                self._count(calls=1)
                continue
            except openai.OpenAIError as error:
                raise self.failure(f"{reply_model.__name__}: {error}") from error
            self._count(calls=1)
            if completion.usage:
                self._count(prompt_tokens=completion.usage.prompt_tokens,
                            completion_tokens=completion.usage.completion_tokens)
            parsed = completion.choices[0].message.parsed
            log.debug("%s answered in %.2fs", reply_model.__name__, time.monotonic() - started)
            if parsed is not None:
                return parsed
            log.warning("%s reply without parsed content (attempt %s)", reply_model.__name__, attempt)
        raise self.failure(f"{reply_model.__name__}: no parsable reply after 2 attempts")


class OpenAIPromptAgents:
    name = "openai"

    def __init__(self, settings: Settings):
        self.chat = OpenAIChat(settings, model=settings.openai_model, timeout_s=settings.openai_timeout_s,
                               max_wait=("openai_rate_limit_max_wait_s", settings.openai_rate_limit_max_wait_s),
                               temperature=settings.openai_temperature, failure=EnhancementError)

    @property
    def usage(self) -> dict[str, int]:
        return self.chat.usage

    @property
    def limiter(self) -> FleetRateLimiter:
        return self.chat.limiter

    def _ask(self, system: str, user: str, reply_model: type[BaseModel]) -> BaseModel:
        return self.chat.ask([{"role": "system", "content": system}, {"role": "user", "content": user}], reply_model)

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
