"""A job's messages still in the broker: queued, or delivered and not yet acknowledged.

A step that is queued holds no lease yet (tasks/leases.py), so leases alone cannot tell it from a
step whose message was lost. Every queue acks late, so a step's message stays in the broker from
send until its task returns: in one of the queue's priority lists while it waits, then in kombu's
`unacked` hash while a worker holds it. Resume reads both before re-sending anything.
"""

from __future__ import annotations

import base64
import json
from typing import NamedTuple

from framefleet.config.celery import QUEUES, broker_lists
from framefleet.tasks.app import app


class QueuedTask(NamedTuple):
    name: str
    args: list


def _decode(raw: bytes | str, unacked: bool) -> QueuedTask | None:
    """A kombu message (Celery protocol 2) → its task name and args; None for anything else.

    Unacknowledged entries are ``[message, exchange, routing key]``.
    """
    try:
        message = json.loads(raw)
        if unacked:
            message = message[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return QueuedTask(message["headers"]["task"], list(args))
    except (ValueError, TypeError, KeyError, IndexError):
        return None  # not a Celery message (kombu discards such entries itself)


def queued_tasks(job_id: str) -> list[QueuedTask]:
    """The job's tasks waiting in any queue or held unacknowledged by a worker."""
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        client = channel.client
        with client.pipeline(transaction=False) as pipe:
            for queue in QUEUES:
                for name in broker_lists(queue):
                    pipe.lrange(name, 0, -1)
            pipe.hvals(channel.unacked_key)
            *queued, unacked = pipe.execute()
    tasks = [_decode(raw, unacked=False) for entries in queued for raw in entries]
    tasks += [_decode(raw, unacked=True) for raw in unacked]
    return [task for task in tasks if task is not None and task.args[:1] == [job_id]]
