"""Fleet-wide rate limits in Redis: at most N requests (and optionally T tokens) per sliding window,
shared by every worker, plus a fleet-wide pause after a provider's 429.

Celery's own ``rate_limit`` counts per worker, so 50 image workers would make 50× the calls. Here
every worker takes its slot from one sorted set of timestamps per budget (an atomic Lua script that
takes the request and its tokens together or neither), and waits when a window is full. A 429 sets
the pause key for as long as the provider asked, up to ``max_pause_s`` (``provider_max_pause_s``),
so the whole fleet backs off, not just the caller, and one absurd ``Retry-After`` cannot stop it for
good. Every wait for a slot has a deadline and may be ended early by a stop check
(docs/provider-pauses.md).
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import logging
import math
import threading
import time
import uuid
from typing import Callable

import redis
from framefleet.tasks.job import metrics
from framefleet.tasks.job.keys import RateLimitKeys
from framefleet.tasks.job.redis import script

log = logging.getLogger(__name__)


# What a 429 pauses the fleet for when it says nothing usable (no header, garbage, inf, nan, < 0).
DEFAULT_PAUSE_S = 1.0
# The cap when none is given (settings: provider_max_pause_s).
DEFAULT_MAX_PAUSE_S = 300.0
# How often a wait with a stop check asks it (the check itself may cache its answer).
STOP_POLL_S = 0.1


def account_key(base_url: str, secret: str) -> str:
    """Budgets belong to an account: fleets on different keys (or servers) count separately.
    A one-way digest, so no key reaches Redis."""
    return hashlib.sha256(f"{base_url}|{secret}".encode()).hexdigest()[:16]


class RateLimitDeadline(TimeoutError):
    """The total wait for a provider's rate limit passed its deadline: the caller's fallback applies."""


class WaitStopped(Exception):
    """The caller's stop check gave a reason while it waited for a slot; no slot was taken."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str, *args) -> None:
    """A WARNING the first time ``key`` comes up in this process: a provider repeating one bad
    header on every 429 would otherwise fill the log."""
    with _warned_lock:
        if key in _warned:
            return
        if len(_warned) >= 1024:  # bounded: a provider sending ever new values cannot grow it
            _warned.clear()
        _warned.add(key)
    log.warning(message, *args)


def retry_after_seconds(value: str) -> float:
    """A Retry-After value: delay-seconds, or an HTTP-date (RFC 9110); a past date means now."""
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)  # ValueError/TypeError when not a date either
        if when.tzinfo is None:  # "-0000": UTC without a source zone
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(0.0, when.timestamp() - time.time())


def outcome(status_code: int) -> str:
    """An API call's outcome as the fleet's metrics label it."""
    return "rate_limited" if status_code == 429 else "ok" if status_code < 400 else "error"


def count_request(provider: str, result: str) -> None:
    """One API call's outcome (``ok``, ``rate_limited``, ``error``: no answer, or 4xx/5xx)."""
    metrics.count("provider_requests_total", provider=provider, outcome=result)


def requested_pause(raw: str | None, source: str, parse: Callable[[str], float] = retry_after_seconds
                    ) -> float | None:
    """The seconds a provider asks to wait in ``raw`` (a header or a part of a body), parsed by
    ``parse``; None when absent or unusable (non-finite, negative, unparsable: logged once). Not
    capped: FleetRateLimiter.pause caps."""
    if raw is None or not raw.strip():
        return None
    try:
        seconds = parse(raw.strip())
    except (ValueError, TypeError, OverflowError):
        seconds = math.nan
    if math.isfinite(seconds) and seconds >= 0:
        return seconds
    warn_once(f"{source}={raw[:80]}", "ignoring %s %r from the provider (not a finite pause ≥ 0)", source, raw[:80])
    return None


# A slot is taken before the request is built and sent; the provider counts it on arrival. Counting
# each slot this much longer than the window keeps a request that arrived late inside our window
# too (0.25 s still let 1% of OpenAI requests through early on a loaded host; 0.5 s costs 0.8% of a
# 60 s window).
TRANSIT_MARGIN_S = 0.5


class FleetRateLimiter:
    """``limit`` requests (and ``token_limit`` tokens, when given) per ``window_s``, whole fleet;
    a provider's pause lasts at most ``max_pause_s``."""

    def __init__(self, client: redis.Redis, name: str, limit: int, window_s: float, token_limit: int | None = None,
                 max_pause_s: float = DEFAULT_MAX_PAUSE_S):
        if not (math.isfinite(max_pause_s) and max_pause_s > 0):
            raise ValueError(f"max_pause_s must be a finite number of seconds > 0, not {max_pause_s!r}")
        self.client, self.limit, self.window_s, self.token_limit = client, limit, window_s, token_limit
        self.max_pause_s = max_pause_s
        self.provider = name.split(":", 1)[0]  # "openai", "replicate": the metrics' label
        keys = RateLimitKeys(name)
        self.key, self.pause_key, self.tokens_key = keys.requests, keys.paused, keys.tokens
        self._take = script(client, "take_rate_slots")

    @property
    def _max_pause_ms(self) -> int:
        return max(1, int(self.max_pause_s * 1000))

    def try_acquire(self, tokens: int = 0) -> float:
        """Take a slot now (returns 0) or say how many seconds until one frees up."""
        keys, args = [self.pause_key, self.key], [self.limit, 1, 0]
        if self.token_limit is not None:
            # A request larger than the whole budget would wait forever: it takes the whole window.
            keys.append(self.tokens_key)
            args += [self.token_limit, max(1, min(tokens, self.token_limit)), 1]
        # Redis server time, so workers with skewed clocks share one window.
        seconds, micros = self.client.time()
        window = self.window_s + TRANSIT_MARGIN_S
        return float(self._take(keys=keys, args=[seconds + micros / 1e6, window, uuid.uuid4().hex,
                                                 self._max_pause_ms, *args]))

    def acquire(self, tokens: int = 0, timeout_s: float | None = None, *, deadline: float | None = None,
                should_stop: Callable[[], str | None] | None = None) -> float:
        """Wait for a slot; returns the seconds waited. Every wait is bounded: give ``timeout_s``
        (from now) or ``deadline`` (``time.monotonic()``), or both (the earlier counts). Raises
        RateLimitDeadline as soon as the next slot is known to come after the deadline, and
        WaitStopped when ``should_stop`` (a StopCheck, asked every STOP_POLL_S) gives a reason."""
        started = time.monotonic()
        bounds = [b for b in (deadline, None if timeout_s is None else started + timeout_s) if b is not None]
        if not bounds:
            raise TypeError("acquire needs timeout_s or deadline: a wait for a provider slot must be bounded")
        until = min(bounds)
        waited = False
        while (wait := self.try_acquire(tokens)) > 0:
            if time.monotonic() + wait > until:
                raise RateLimitDeadline(f"rate limited: {self.key} has no slot within "
                                        f"{max(0.0, until - started):.1f}s (next in {wait:.1f}s)")
            self._sleep(min(wait, 1.0) + 0.01, should_stop)
            waited = True
        if not waited:
            return 0.0
        seconds = time.monotonic() - started
        metrics.count("provider_wait_seconds_total", seconds, provider=self.provider)
        return seconds

    @staticmethod
    def _sleep(seconds: float, should_stop: Callable[[], str | None] | None) -> None:
        if should_stop is None:
            time.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while True:
            if reason := should_stop():
                raise WaitStopped(reason)
            if (left := end - time.monotonic()) <= 0:
                return
            time.sleep(min(STOP_POLL_S, left))

    def pause(self, seconds: float) -> float:
        """After a provider's 429: nobody in the fleet takes a slot for ``seconds``, at most
        ``max_pause_s`` (a longer pause already set wins). Returns the pause set. Refuses (ValueError)
        non-finite or negative input: callers parse the provider's value with ``requested_pause``."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a pause must be a finite number of seconds ≥ 0, not {seconds!r}")
        if seconds > self.max_pause_s:
            warn_once(f"cap:{self.key}:{seconds:g}", "%s: the provider asked for a %gs pause; pausing %gs "
                      "(provider_max_pause_s)", self.key, seconds, self.max_pause_s)
            seconds = self.max_pause_s
        millis = max(1, int(seconds * 1000))
        current = self.client.pttl(self.pause_key)
        if current < millis or current > self._max_pause_ms:
            self.client.set(self.pause_key, "1", px=millis)
        return seconds
