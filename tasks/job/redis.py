"""The fleet's Redis: one client per URL, its Lua scripts by name (``tasks/job/lua/*.lua``), and reads
made ahead in a script that runs anyway (``Prefetch``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from importlib.resources import files
from typing import Any, NamedTuple

import redis
from framefleet.config.settings import Settings, get_settings, is_sentinel_url
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.commands.core import Script
from redis.connection import parse_url
from redis.exceptions import NoScriptError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

SENTINEL_PORT = 26379


class Prefetch(NamedTuple):
    """Reads made ahead, in a round trip that runs anyway: the transaction that takes a step's lease
    (what the step's work reads first, coordination/leases.py) or the script that stores its
    outcome (what its caller reads next, ``Job.after_outcome``; ``script_then_reads``).
    ``keep`` hands the replies over, and the next read of the same records returns them instead of
    reading again."""

    reads: tuple[tuple, ...]
    keep: Callable[[list], None]


class MasterFollowingConnection(SentinelManagedConnection):
    """A connection to the master the sentinels name, also when a command reconnects.

    redis-py asks the sentinels in ``connect()``, which the pool calls when it hands a connection
    out; but a command's own retries reconnect through ``send_packed_command``, which reuses the
    address the connection last had, so every retry of a call that met a failover would go to the
    dead master and the call would fail however long its retries last.
    """

    def send_packed_command(self, command, check_health=True):
        if not self._sock:
            self.connect()
        super().send_packed_command(command, check_health)


def sentinel_nodes(url: str) -> tuple[list[tuple[str, int]], dict]:
    """``sentinel://[:PASSWORD@]HOST:PORT[/DB];sentinel://HOST:PORT;...`` → the sentinels' addresses
    and the master's connection options (db, username, password), read from the first URL, as
    kombu's broker transport and Celery's result backend read them."""
    nodes, options = [], {}
    for number, part in enumerate(chunk.strip() for chunk in url.split(";") if chunk.strip()):
        if not is_sentinel_url(part):
            raise ValueError(f"{part.split('://')[0]}:// among sentinel:// URLs; every part must be sentinel://")
        parsed = parse_url("redis" + part[len("sentinel"):])  # redis-py's own reading of host, port, db, auth
        nodes.append((parsed.pop("host", "localhost"), parsed.pop("port", SENTINEL_PORT)))
        if number == 0:
            options = {key: parsed[key] for key in ("db", "username", "password") if key in parsed}
    return nodes, options


def connect(url: str, settings: Settings, **options) -> redis.Redis:
    """A client of the Redis at ``url`` (``options``: redis-py's connection options).

    For a sentinel:// URL, a client of the master the sentinels monitor as
    ``redis_sentinel_master``: each connection attempt, a command's retries included, asks them
    where the master is now, and a connection that meets a demoted master is dropped, so the
    client follows a failover. The sentinels are asked once per attempt (no retries of their own:
    the client's retry covers the whole attempt), with ``redis_sentinel_password`` if they
    require one.
    """
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    nodes, credentials = sentinel_nodes(url)
    asking = {key: value for key, value in options.items() if key.startswith("socket_")}
    asking["retry"] = Retry(NoBackoff(), 0)
    if settings.redis_sentinel_password is not None:
        asking["password"] = settings.redis_sentinel_password.get_secret_value()
    sentinels = Sentinel(nodes, sentinel_kwargs=asking, **credentials, **options)
    return sentinels.master_for(settings.redis_sentinel_master, connection_class=MasterFollowingConnection)


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    # Ride out a Redis restart or a Sentinel failover (a few seconds) instead of failing the task
    # that noticed it.
    retry = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=8)
    return connect(url, get_settings(), decode_responses=True, retry=retry, health_check_interval=15,
                   retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def state_client() -> redis.Redis:
    """Job state, leases, limiters, events, the exporter: every Redis call of the fleet outside
    Celery's own goes through this client (it follows a Sentinel failover, see ``connect``)."""
    settings = get_settings()
    if not settings.state_url:
        raise RuntimeError("FRAMEFLEET_BROKER_URL (or FRAMEFLEET_STATE_REDIS_URL) is not set")
    return _client(settings.state_url)


@lru_cache(maxsize=None)
def lua_source(name: str) -> str:
    """The script ``name`` (``tasks/job/lua/NAME.lua``), or for ``"a+b"`` the chain of a, then b
    (``chain``)."""
    if "+" in name:
        steps = ",\n".join(f"function(KEYS, ARGV)\n{lua_source(step)}\nend" for step in name.split("+"))
        return lua_source("chain").replace("--STEPS--", steps)
    return (files("framefleet.tasks.job") / "lua" / f"{name}.lua").read_text()


class ScriptCall(NamedTuple):
    """A call of one of the fleet's scripts, built by whoever knows its arguments and run by a
    caller that chains it after its own write (``chain``)."""

    name: str
    keys: list
    args: list

    def run(self, client: redis.Redis) -> Any:
        return script(client, self.name)(keys=self.keys, args=self.args)


def chain(*calls: ScriptCall) -> ScriptCall:
    """One call running ``calls`` in order, each on its own keys and arguments (chain.lua): each
    runs only if the one before it wrote (its reply is not false, nil, 0 or negative). Its reply
    is the list of the replies of those that ran."""
    if any("+" in call.name for call in calls):
        raise ValueError("chain: a chained call is chained by naming its parts, not nested")
    counts = [count for call in calls for count in (len(call.keys), len(call.args))]
    return ScriptCall("+".join(call.name for call in calls), [key for call in calls for key in call.keys],
                      [*counts, *(arg for call in calls for arg in call.args)])


@lru_cache(maxsize=256)
def script(client: redis.Redis, name: str) -> Script:
    """The script ``name`` on ``client`` (EVALSHA, loaded on first use)."""
    return client.register_script(lua_source(name))


def packed(commands: tuple[tuple, ...] | list[tuple]) -> list:
    """Commands as a script's ARGV carries them: each as its length followed by its words (the
    scripts that run commands they are given: write_if_alive, swap_frame)."""
    return [part for command in commands for part in (len(command), *command)]


def script_then_reads(client: redis.Redis, name: str, keys: list, args: list,
                      reads: tuple[tuple, ...]) -> tuple[Any, list]:
    """Run the script ``name``, then ``reads`` right after it, in one round trip: (the script's
    reply, each read's reply). The reads are pipelined beside the script, not run in it: a large
    reply costs Redis several times more passed through Lua."""
    if not reads:
        return script(client, name)(keys=keys, args=args), []
    lua = script(client, name)
    for _ in range(2):
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(lua.sha, len(keys), *keys, *args)
        for read in reads:
            pipe.execute_command(*read)
        replies = pipe.execute(raise_on_error=False)
        if not isinstance(replies[0], NoScriptError):
            break
        lua.sha = client.script_load(lua.script)  # Redis restarted or failed over: scripts are gone
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies[0], replies[1:]
