"""Fixes for Celery/kombu defects that end a worker on Redis, or break a chord when Redis restarts
or fails over; every worker imports this (``include``).

The restart fix is gated to the Celery releases that have the defect; kombu has the undecodable
entry defect in 5.6.2 and in its newest release, 5.7.0, and Celery's Redis result backend counts a
chord's parts without retries, and subscribes to the results of every chord it sends, in every
release. tests/integration/test_broker_restart.py, test_redis_outages.py and
test_jobs_end_to_end.py check the behaviour, so an upgrade that still has a defect, or moved the
code patched here, fails there.
"""

from __future__ import annotations

import functools
import logging
import threading
from contextlib import contextmanager
from queue import Empty

import celery
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.redis import RedisBackend
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

# Celery 5.7.0 closes the consumer's connection right after collect() on a connection loss.
# collect() has already detached the transport (transport.client = None) but keeps the default
# channel, which a failed close left half-open while it waited in BRPOP. So the close re-closes
# that channel, its restore of unacked messages builds a Redis client from transport.client, and
# the AttributeError (... 'hostname') ends the worker. 5.6.3 never closed after collect().
CLOSE_AFTER_COLLECT = (5, 7) <= celery.VERSION[:2] < (5, 8)


def _forget_default_channel_after_collect(collect):
    @functools.wraps(collect)
    def collect_and_forget(self: Connection, *args, **kwargs):
        collect(self, *args, **kwargs)
        # collect() already closed the channel as far as it could; it belongs to no transport now.
        # Its unacked messages stay in Redis: tasks still running ack them, and the rest return
        # to their queue after the visibility timeout.
        self._default_channel = None

    return collect_and_forget


def _discard_undecodable(brpop_read):
    """A BRPOP item that is not a kombu message: log it and drop it, as kombu does for pub/sub.

    kombu decodes the item outside any error handling, so one non-JSON entry pushed into a queue
    would end the worker with "Unrecoverable error" (kombu 5.6.2 and 5.7.0 alike).
    """

    @functools.wraps(brpop_read)
    def brpop_read_discarding(self, **options):
        try:
            return brpop_read(self, **options)
        except (TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            log.error("Discarded an entry in a Redis queue that is not a kombu message (%s): %.200r",
                      exc, getattr(exc, "doc", None))
            raise Empty() from None  # what a BRPOP that delivered nothing raises

    return brpop_read_discarding


def _count_chord_part_with_retries(on_chord_part_return):
    """Celery's Redis result backend stores a task's result with retries (``ensure``: the result
    backend's retry policy, 20 tries a second apart) but counts it into its chord with none. A
    connection lost in between (a Redis restart, a Sentinel failover) fails a task that succeeded,
    its FAILURE result errors the chord, and the chord body (a frame's scoring) never runs.

    Retried here like the result: Celery's script adds each header task once, and the body goes
    to the one caller that claims it, so a retry after a count that did land counts nothing twice
    and, while the claim lasts, sends nothing twice (a body sent again later is a second copy of a
    step, which the fleet's leases and transition table make harmless).
    """

    @functools.wraps(on_chord_part_return)
    def count_with_retries(self: RedisBackend, request, state, result, **kwargs):
        return self.ensure(functools.partial(on_chord_part_return, self, **kwargs), (request, state, result))

    return count_with_retries


_sending = threading.local()


@contextmanager
def results_not_awaited():
    """Send tasks whose results this process never waits for (the fleet's chords).

    Sending a chord, Celery's Redis result backend subscribes to each header task's result channel
    (the group's ready barrier) and unsubscribes only when that result arrives in a ``get()``. A
    worker that sends chords and never waits on them keeps every channel subscribed: one Redis
    SUBSCRIBE per header task, and subscriptions that pile up in Redis and in the worker for as long
    as it runs (celery/celery#4824; the fleet's header tasks store no result, so none ever
    arrives).
    """
    _sending.not_awaited = True
    try:
        yield
    finally:
        _sending.not_awaited = False


def _unless_not_awaited(add_pending_result):
    @functools.wraps(add_pending_result)
    def add_unless_not_awaited(self, result, *args, **kwargs):
        if getattr(_sending, "not_awaited", False):
            return result
        return add_pending_result(self, result, *args, **kwargs)

    return add_unless_not_awaited


AsyncBackendMixin.add_pending_result = _unless_not_awaited(AsyncBackendMixin.add_pending_result)
RedisBackend.on_chord_part_return = _count_chord_part_with_retries(RedisBackend.on_chord_part_return)
if CLOSE_AFTER_COLLECT:
    Connection.collect = _forget_default_channel_after_collect(Connection.collect)
kombu_redis.Channel._brpop_read = _discard_undecodable(kombu_redis.Channel._brpop_read)
