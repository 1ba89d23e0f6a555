"""The fleet a command-line client talks to: the configured one, or an embedded one it starts.

With no broker configured (`FRAMEFLEET_BROKER_URL` unset), a local Redis and one worker per queue
are started, and stopped when the ``with`` block ends, however it ends (SIGTERM included: it is
raised as KeyboardInterrupt, like Ctrl-C, so the workers in their own sessions are not orphaned).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from celery import Celery
from framefleet.config.celery import QUEUES
from framefleet.config.settings import get_settings


@contextmanager
def client_fleet(store_root: Path | None, log_dir: Path, say: Callable[[str], object] = print) -> Iterator[Celery]:
    """Yield the Celery app, configured for the fleet; ``store_root`` replaces the configured store."""
    from framefleet.workers.fleet import Fleet
    from framefleet.workers.local_redis import LocalRedis

    with ExitStack() as stack:
        env: dict[str, str] = {}
        if store_root is not None:
            env["FRAMEFLEET_STORE_URL"] = f"file://{store_root}"
        embedded = not get_settings().broker_url
        if embedded:
            previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
            stack.callback(signal.signal, signal.SIGTERM, previous)
            redis_server = stack.enter_context(LocalRedis())
            env["FRAMEFLEET_BROKER_URL"] = redis_server.url
            say(f"Started Redis on {redis_server.url}")
        os.environ.update(env)  # this process is a client of the same broker and store
        get_settings.cache_clear()
        from framefleet.tasks.artifacts.store import fleet_store
        from framefleet.workers.app import configure

        fleet_store.cache_clear()
        app = configure()
        if embedded:
            say(f"Starting one worker per queue ({', '.join(QUEUES)}); logs in {log_dir}")
            stack.enter_context(Fleet(env, log_dir=log_dir))
        yield app


def _raise_keyboard_interrupt(*_) -> None:
    raise KeyboardInterrupt
