"""Fixes for Celery/kombu defects that end a worker on Redis; every worker imports this (``include``).

The restart fix is gated to the Celery releases that have the defect; kombu has the other one in
5.6.2 and in its newest release, 5.7.0. tests/integration/test_broker_restart.py checks the
behaviour, so an upgrade that still has a defect, or moved the code patched here, fails there.
"""

from __future__ import annotations

import functools
import logging
from queue import Empty

import celery
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


if CLOSE_AFTER_COLLECT:
    Connection.collect = _forget_default_channel_after_collect(Connection.collect)
kombu_redis.Channel._brpop_read = _discard_undecodable(kombu_redis.Channel._brpop_read)
