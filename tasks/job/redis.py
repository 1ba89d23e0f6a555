"""The fleet's Redis: one client per URL, and its Lua scripts by name (``tasks/job/lua/*.lua``)."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

import redis
from framefleet.config.settings import get_settings
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import Script
from redis.retry import Retry


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    # Ride out a Redis restart (a few seconds) instead of failing the task that noticed it.
    retry = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=8)
    return redis.Redis.from_url(url, decode_responses=True, retry=retry, health_check_interval=15,
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def state_client() -> redis.Redis:
    url = get_settings().state_url
    if not url:
        raise RuntimeError("FRAMEFLEET_BROKER_URL (or FRAMEFLEET_STATE_REDIS_URL) is not set")
    return _client(url)


@lru_cache(maxsize=None)
def lua_source(name: str) -> str:
    return (files("framefleet.tasks.job") / "lua" / f"{name}.lua").read_text()


@lru_cache(maxsize=256)
def script(client: redis.Redis, name: str) -> Script:
    """The script ``name`` on ``client`` (EVALSHA, loaded on first use)."""
    return client.register_script(lua_source(name))
