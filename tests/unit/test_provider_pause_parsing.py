"""How a provider's 429 is read: every pause it asks for is a finite number of seconds ≥ 0, an
unusable value falls back to DEFAULT_PAUSE_S with one WARNING (docs/provider-pauses.md)."""

from __future__ import annotations

import email.utils
import logging
import time

import httpx
import pytest
from framefleet.tasks.providers import ratelimit
from framefleet.tasks.providers.openai_llm import retry_delay
from framefleet.tasks.providers.ratelimit import DEFAULT_PAUSE_S, requested_pause
from framefleet.tasks.providers.replicate_images import retry_after

UNUSABLE = ["inf", "-inf", "Infinity", "nan", "NaN", "-5", "-0.5", "garbage", "30s", "1e400", "9" * 400]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees its own first warnings (they are logged once per process)."""
    monkeypatch.setattr(ratelimit, "_warned", set())


@pytest.mark.parametrize("raw", UNUSABLE)
def test_an_unusable_value_is_no_pause(raw):
    assert requested_pause(raw, "Retry-After") is None


@pytest.mark.parametrize("raw, seconds", [("30", 30.0), ("1.5", 1.5), ("0", 0.0), (" 7 ", 7.0), ("1e9", 1e9)])
def test_a_number_is_taken_as_it_is_and_capped_only_by_the_limiter(raw, seconds):
    assert requested_pause(raw, "Retry-After") == seconds


def test_an_http_date_is_the_seconds_until_then_and_a_past_one_is_now():
    later = requested_pause(email.utils.formatdate(time.time() + 60, usegmt=True), "Retry-After")
    assert later is not None and 50 < later <= 60
    assert requested_pause(email.utils.formatdate(time.time() - 60, usegmt=True), "Retry-After") == 0.0


def test_an_absent_value_is_none_and_not_logged(caplog):
    with caplog.at_level(logging.WARNING):
        assert requested_pause(None, "Retry-After") is None and requested_pause(" ", "Retry-After") is None
    assert not caplog.records


def test_an_unusable_value_is_logged_once_at_warning(caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            requested_pause("inf", "Replicate Retry-After")
        requested_pause("nan", "Replicate Retry-After")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "'inf'" in warnings[0] and "'nan'" in warnings[1]
    assert all("Replicate Retry-After" in w for w in warnings)


# OpenAI --------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers, seconds", [
    ({"retry-after-ms": "1e12"}, 1e9),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after": "1000000000"}, 1e9),
    ({"retry-after": "20"}, 20.0),
    ({"retry-after-ms": "inf", "retry-after": "3"}, 3.0),  # the next header still counts
    ({"retry-after-ms": "nan"}, DEFAULT_PAUSE_S),
    ({"retry-after-ms": "-5"}, DEFAULT_PAUSE_S),
    ({"retry-after-ms": "garbage"}, DEFAULT_PAUSE_S),
    ({"retry-after": "inf"}, DEFAULT_PAUSE_S),
    ({"retry-after": "1e400"}, DEFAULT_PAUSE_S),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 0.02),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "99999999h"}, 99999999 * 3600.0),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "9" * 400 + "s"}, DEFAULT_PAUSE_S),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"}, DEFAULT_PAUSE_S),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon",
      "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2s"}, 2.0),
    ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "6m0s"}, DEFAULT_PAUSE_S),  # not exhausted
    ({}, DEFAULT_PAUSE_S),
])
def test_openai_retry_delay(headers, seconds):
    assert retry_delay(httpx.Headers(headers)) == pytest.approx(seconds)


# Replicate -----------------------------------------------------------------------------------
def replicate_429(retry_after_header: str | None, resets_in: str) -> httpx.Response:
    headers = {} if retry_after_header is None else {"Retry-After": retry_after_header}
    return httpx.Response(429, headers=headers, json={
        "detail": f"Request was throttled. Your rate limit resets in ~{resets_in}s.", "status": 429})


@pytest.mark.parametrize("header, resets_in, seconds", [
    ("30", "30", 30.0),
    ("1e9", "1e9", 1e9),
    (None, "999999999", 999999999.0),
    (None, "12", 12.0),
    ("inf", "12", 12.0),  # the body still says when
    ("inf", "inf", DEFAULT_PAUSE_S),
    ("nan", "nan", DEFAULT_PAUSE_S),
    ("-5", "-5", DEFAULT_PAUSE_S),
    ("garbage", "garbage", DEFAULT_PAUSE_S),
    (None, "9" * 400, DEFAULT_PAUSE_S),
])
def test_replicate_retry_after(header, resets_in, seconds):
    assert retry_after(replicate_429(header, resets_in)) == seconds
