"""What the broker holds: a job's queued messages, and admitting a new frame's round together.

A step that is queued holds no lease yet (leases.py), so leases alone cannot tell it from a
step whose message was lost. Every queue acks late, so a step's message stays in the broker from
send until its task returns: in one of the queue's priority lists while it waits, then in kombu's
`unacked` hash while a worker holds it. Resume reads both before re-sending anything.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import time
from typing import NamedTuple

import kombu.exceptions
import redis
from framefleet.config.celery import PRIORITY_STEPS, QUEUES, broker_lists
from framefleet.tasks.app import app
from framefleet.tasks.job.redis import script

log = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 5  # waiting for a pooled broker connection

# How far from the served end of a priority list the siblings of a round are looked for: a
# round's messages are sent one after another, so they sit next to the one just taken.
SIBLING_WINDOW = 64
# A round's siblings are admitted once per worker process (the first of them to start here; the
# rest find nothing left to move).
ADMITTED_MEMORY = 256
# How long this process trusts its last read of whether new jobs wait: a "no" briefly, since a job
# that arrives meanwhile loses the running jobs' next hand-over to it (no slot is held); a "yes"
# longer, since a stale one only holds a slot until the job's next round.
WAITING_MAX_AGE_S = {True: 0.5, False: 0.1}

_admitted: collections.deque[str] = collections.deque(maxlen=ADMITTED_MEMORY)
_waiting: dict[str, tuple[float, bool]] = {}


class QueuedTask(NamedTuple):
    name: str
    args: list
    kwargs: dict
    id: str = ""


def decode_message(raw: bytes | str, unacked: bool) -> QueuedTask | None:
    """A kombu message (Celery protocol 2) → its task name, args, kwargs and id; None for anything else.

    Unacknowledged entries are ``[message, exchange, routing key]``.
    """
    try:
        message = json.loads(raw)
        if unacked:
            message = message[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs = json.loads(body)[:2]
        headers = message["headers"]
        return QueuedTask(headers["task"], list(args), dict(kwargs), headers.get("id") or "")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None  # not a Celery message (kombu discards such entries itself)


def queued_tasks(job_id: str) -> list[QueuedTask]:
    """The job's tasks waiting in any queue or held unacknowledged by a worker (one snapshot)."""
    return [task for task in broker_tasks() if job_id in job_ids_of(task)]


def job_ids_of(task: QueuedTask) -> set[str]:
    """The job a task is for: its first argument, or its second where Celery puts the previous
    step's result first (a chord body, the next link of a chain: scoring, selection)."""
    return {arg for arg in task.args[:2] if isinstance(arg, str)}


def broker_tasks() -> list[QueuedTask]:
    """Every task waiting in any queue or held unacknowledged by a worker (one snapshot)."""
    with app.pool.acquire(block=True, timeout=BROKER_TIMEOUT_S) as connection:
        channel = connection.default_channel
        client = channel.client
        with client.pipeline(transaction=True) as pipe:
            for queue in QUEUES:
                for name in broker_lists(queue):
                    pipe.lrange(name, 0, -1)
            pipe.hvals(channel.unacked_key)
            *queued, unacked = pipe.execute()
    tasks = [decode_message(raw, unacked=False) for entries in queued for raw in entries]
    tasks += [decode_message(raw, unacked=True) for raw in unacked]
    return [task for task in tasks if task is not None]


def waiting_tasks(queue: str, name: str, window: int) -> list[QueuedTask]:
    """The ``name`` tasks waiting in ``queue``, in the order workers will take them, read without
    taking them: up to ``window`` messages from the served end of each priority list."""
    with app.pool.acquire(block=True, timeout=BROKER_TIMEOUT_S) as connection:
        with connection.default_channel.client.pipeline(transaction=False) as pipe:
            for served_next in broker_lists(queue):
                pipe.lrange(served_next, -window, -1)
            lists = pipe.execute()
    tasks = (decode_message(raw, unacked=False) for entries in lists for raw in reversed(entries))
    return [task for task in tasks if task is not None and task.name == name]


def admit_round(queue: str, group_id: str) -> int:
    """Move the rest of a chord header (a frame's round) from the lower priority lists of
    ``queue`` to the served end of its first one, atomically (no message is copied or lost).

    Called when a new job's first variation starts: its siblings then take the next free slots
    instead of waiting behind running jobs' next frames, so the frame runs in one piece.
    Returns how many messages moved.
    """
    served_first, *waiting = broker_lists(queue)
    with app.pool.acquire(block=True, timeout=BROKER_TIMEOUT_S) as connection:
        admit = script(connection.default_channel.client, "admit_round")
        return admit(keys=[served_first, *reversed(waiting)], args=[group_id, SIBLING_WINDOW])


def admit_siblings(queue: str, request, job_id: str, frame: str) -> None:
    """A new job's variation has started (``request``: its Celery request): its frame runs in one
    piece, the rest of its round taking the next free slots. An optimisation only: a broker error
    is logged and the variation goes on."""
    if not request.group or (request.delivery_info or {}).get("priority") != PRIORITY_STEPS[-1]:
        return
    if request.group in _admitted:
        return
    _admitted.append(request.group)
    try:
        if moved := admit_round(queue, request.group):
            log.info("job %s: admitted %d more variations of %s", job_id, moved, frame)
    except (redis.RedisError, OSError, kombu.exceptions.KombuError) as error:
        log.warning("job %s: could not admit the rest of %s's round: %s", job_id, frame, error)


def jobs_waiting_for(queue: str) -> bool:
    """Whether any message waits in ``queue``'s lower priority lists (new jobs' first frames), as
    read at most WAITING_MAX_AGE_S[answer] ago in this process."""
    read_at, answer = _waiting.get(queue, (float("-inf"), False))
    if time.monotonic() - read_at <= WAITING_MAX_AGE_S[answer]:
        return answer
    _, *waiting = broker_lists(queue)
    with app.pool.acquire(block=True, timeout=BROKER_TIMEOUT_S) as connection:
        with connection.default_channel.client.pipeline(transaction=False) as pipe:
            for name in waiting:
                pipe.llen(name)
            answer = any(pipe.execute())
    _waiting[queue] = (time.monotonic(), answer)
    return answer
