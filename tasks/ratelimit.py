"""Fleet-wide rate limits in Redis: at most N requests (and optionally T tokens) per sliding window,
shared by every worker, plus a fleet-wide pause after a provider's 429.

Celery's own ``rate_limit`` counts per worker, so 50 image workers would make 50× the calls. Here
every worker takes its slot from one sorted set of timestamps per budget (an atomic Lua script that
takes the request and its tokens together or neither), and waits when a window is full. A 429 sets
the pause key for as long as the provider asked, so the whole fleet backs off, not just the caller.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import redis

# KEYS[1] the pause key, KEYS[2..] one sorted set per budget (members "uuid:cost").
# ARGV: now, window seconds, member id, then per budget: limit, cost, weighted (1: sum the costs,
# 0: every member costs 1, so ZCARD is enough). Returns '0' when the slots were taken, else the
# seconds until they could be.
_TAKE_SLOTS = """
local now, window, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then return tostring(paused / 1000) end
local wait = 0
for i = 2, #KEYS do
  local limit, cost, weighted = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]), ARGV[3 * i] == '1'
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local used = 0
  local entries = nil
  if weighted then
    entries = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do used = used + tonumber(string.match(entries[j], ':(%d+)$')) end
  else
    used = redis.call('ZCARD', KEYS[i])
  end
  if used + cost > limit then
    local need = used + cost - limit
    entries = entries or redis.call('ZRANGE', KEYS[i], 0, need - 1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      need = need - (weighted and tonumber(string.match(entries[j], ':(%d+)$')) or 1)
      if need <= 0 then
        wait = math.max(wait, tonumber(entries[j + 1]) + window - now)
        break
      end
    end
  end
end
if wait > 0 then return tostring(wait) end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now, member .. ':' .. ARGV[3 * i - 1])
  redis.call('EXPIRE', KEYS[i], math.ceil(window) + 1)
end
return '0'
"""


def account_key(base_url: str, secret: str) -> str:
    """Budgets belong to an account: fleets on different keys (or servers) count separately.
    A one-way digest, so no key reaches Redis."""
    return hashlib.sha256(f"{base_url}|{secret}".encode()).hexdigest()[:16]


class RateLimitDeadline(TimeoutError):
    """The total wait for a provider's rate limit passed its deadline: the caller's fallback applies."""


# A slot is taken before the request is built and sent; the provider counts it on arrival. Counting
# each slot this much longer than the window keeps a request that arrived late inside our window
# too (0.25 s still let 1% of OpenAI requests through early on a loaded host; 0.5 s costs 0.8% of a
# 60 s window).
TRANSIT_MARGIN_S = 0.5


class FleetRateLimiter:
    """``limit`` requests (and ``token_limit`` tokens, when given) per ``window_s``, whole fleet."""

    def __init__(self, client: redis.Redis, name: str, limit: int, window_s: float, token_limit: int | None = None):
        self.client, self.limit, self.window_s, self.token_limit = client, limit, window_s, token_limit
        self.key = f"framefleet:ratelimit:{name}"
        self.pause_key = f"{self.key}:paused"
        self._take = client.register_script(_TAKE_SLOTS)

    def try_acquire(self, tokens: int = 0) -> float:
        """Take a slot now (returns 0) or say how many seconds until one frees up."""
        keys, args = [self.pause_key, self.key], [self.limit, 1, 0]
        if self.token_limit is not None:
            # A request larger than the whole budget would wait forever: it takes the whole window.
            keys.append(f"{self.key}:tokens")
            args += [self.token_limit, max(1, min(tokens, self.token_limit)), 1]
        # Redis server time, so workers with skewed clocks share one window.
        seconds, micros = self.client.time()
        window = self.window_s + TRANSIT_MARGIN_S
        return float(self._take(keys=keys, args=[seconds + micros / 1e6, window, uuid.uuid4().hex, *args]))

    def acquire(self, tokens: int = 0, timeout_s: float | None = None) -> float:
        """Wait for a slot; returns the seconds waited. Raises RateLimitDeadline when the wait would
        pass ``timeout_s``."""
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        waited = False
        while (wait := self.try_acquire(tokens)) > 0:
            if deadline is not None and time.monotonic() + wait > deadline:
                raise RateLimitDeadline(f"rate limited: {self.key} has no slot within {timeout_s:.1f}s")
            time.sleep(min(wait, 1.0) + 0.01)
            waited = True
        return time.monotonic() - started if waited else 0.0

    def pause(self, seconds: float) -> None:
        """After a provider's 429: nobody in the fleet takes a slot for ``seconds`` (a longer pause wins)."""
        millis = max(1, int(seconds * 1000))
        current = self.client.pttl(self.pause_key)
        if current < millis:
            self.client.set(self.pause_key, "1", px=millis)
