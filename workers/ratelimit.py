"""A fleet-wide rate limit in Redis: at most N events per sliding window, shared by every worker.

Celery's own ``rate_limit`` counts per worker, so 50 image workers would make 50× the calls. Here
every worker takes a slot from one sorted set of timestamps (an atomic Lua script), and waits when
the window is full.
"""

from __future__ import annotations

import time
import uuid

import redis

# KEYS[1] the window's sorted set; ARGV: now, window seconds, limit, member.
# Returns 0 when a slot was taken, else the seconds until the oldest slot frees up.
_TAKE_SLOT = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[4])
  redis.call('EXPIRE', key, math.ceil(window) + 1)
  return '0'
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + window - now)
"""


class FleetRateLimiter:
    def __init__(self, client: redis.Redis, name: str, limit: int, window_s: float):
        self.client, self.key, self.limit, self.window_s = client, f"framefleet:ratelimit:{name}", limit, window_s
        self._take = client.register_script(_TAKE_SLOT)

    def try_acquire(self) -> float:
        """Take a slot now (returns 0) or say how many seconds until one frees up."""
        # Redis server time, so workers with skewed clocks share one window.
        seconds, micros = self.client.time()
        return float(self._take(keys=[self.key], args=[seconds + micros / 1e6, self.window_s, self.limit,
                                                        uuid.uuid4().hex]))

    def acquire(self, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (wait := self.try_acquire()) > 0:
            if deadline is not None and time.monotonic() + wait > deadline:
                raise TimeoutError(f"rate limit {self.limit}/{self.window_s}s: no slot within {timeout_s}s")
            time.sleep(min(wait, 1.0) + 0.01)
