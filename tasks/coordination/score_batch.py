"""Scoring batched across frames: the score task a gpu worker takes leads one forward pass over its
own round and the rounds waiting behind it on the gpu queue (docs/scoring.md, "Batched across
frames").

A GPU's image towers reach their throughput at batches of hundreds; a round has 4 candidates, and
rounds finish one after another, so while one frame is scored the next ones wait in the queue.
Celery hands a solo worker one message at a time (prefetch 1, late acks), so the leader reads the
waiting messages without taking them (broker.py ``waiting_tasks``) and takes, for each waiting
round, the same lease that round's own task would take (``score:{frame}/{revision}/{source}``):

- a round whose lease another copy holds, whose outcome is stored or whose job is closed (the
  lease's ``while_open`` check) is not taken: its own task runs it as before;
- the step scores every taken round in the pass, stores each outcome with its own write and
  releases each lease as finished (steps/score.py ``score_with_waiting``);
- the messages stay in the queue: when a worker takes one, its ``run_step`` finds the stored
  outcome and returns it at once, so each frame's chord and chain go on exactly as before;
- a pass that raises leaves every lease it still holds for the watchdog, as a step that raised
  does; a leader that dies stops renewing them, they expire, and the watchdog re-drives those
  rounds as any dead step's (their own messages, still queued, run them too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import kombu.exceptions
import redis
from celery.worker.state import revoked
from framefleet.config.celery import SCORE_VARIATIONS, TASK_QUEUES
from framefleet.tasks.coordination.broker import QueuedTask, waiting_tasks
from framefleet.tasks.coordination.leases import JobClosed, Lease
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import VariationRecord
from framefleet.tasks.job.states import PromptSource

log = logging.getLogger(__name__)

QUEUE = TASK_QUEUES[SCORE_VARIATIONS]


class WaitingRound(NamedTuple):
    """A waiting score task's round, its lease held by the leader."""

    job: Job
    frame: str
    revision: int
    source: str
    variations: list[VariationRecord]
    lease: Lease


def score_step(frame: str, revision: int, source: str) -> str:
    """The lease of a round's scoring: one per round, whichever task scores it."""
    return f"score:{frame}/{revision}/{source}"


def round_of(results: list[dict]) -> tuple[list[VariationRecord], str]:
    """A score task's chord-header results: the round's variations and its prompt source."""
    variations = [VariationRecord.model_validate(r) for r in results]
    return variations, variations[0].prompt_source if variations else PromptSource.ENHANCED


def score_arguments(results: list[dict], job_id: str, frame: str, revision: int = 0) -> tuple:
    """A queued call's arguments, bound as the score task (tasks/entry.py) binds them."""
    return results, job_id, frame, revision


@contextmanager
def waiting_rounds(job_id: str, frame: str, revision: int, source: str, limit: int,
                   wait_s: float) -> Iterator[list[WaitingRound]]:
    """Up to ``limit`` rounds waiting on the gpu queue besides the leader's own (``job_id``'s
    ``frame``), their leases taken; the queue is read again once after ``wait_s`` unless
    ``limit`` rounds were taken at once. The caller releases each lease once the round's outcome is stored;
    if the block raises, the leases it still holds are left for the watchdog."""
    taken: list[WaitingRound] = []
    try:
        if limit > 0:
            take_waiting(taken, {(job_id, score_step(frame, revision, source))}, limit, wait_s)
        yield taken
    except BaseException:
        for waiting in taken:  # a lease already released as finished is not held any more: no-op
            try:
                waiting.lease.release(finished=False)
            except Exception as error:  # noqa: BLE001 — the rest must still leave the keeper, or it would
                # renew them while this worker lives and their own tasks would wait on them for ever;
                # this one is no longer renewed either: it runs out and the watchdog finds it.
                log.warning("lease %s left to run out: %s", waiting.lease.key, error)
        raise


def take_waiting(taken: list[WaitingRound], seen: set[tuple[str, str]], limit: int, wait_s: float) -> None:
    """Read the queue; when it held fewer than ``limit`` rounds to take, wait ``wait_s`` once and
    read it again: two reads at most, so a lone frame costs the broker two round trips."""
    for attempt in (1, 2):
        try:
            queued = waiting_tasks(QUEUE, SCORE_VARIATIONS, window=2 * limit)
        except (redis.RedisError, OSError, kombu.exceptions.KombuError) as error:
            # An optimisation only, as admitting a round's siblings is: the pass goes on with what it has.
            log.warning("could not read the %s queue for rounds to score together: %s", QUEUE, error)
            return
        for task in queued:
            if len(taken) == limit:
                return
            try:
                waiting = take(task, seen)
            except (redis.RedisError, OSError) as error:  # the pass goes on with the rounds it has
                log.warning("could not take a waiting round to score together: %s", error)
                return
            if waiting is not None:
                taken.append(waiting)
        if len(taken) == limit or wait_s <= 0 or attempt == 2:
            return
        time.sleep(wait_s)


def take(task: QueuedTask, seen: set[tuple[str, str]]) -> WaitingRound | None:
    """The queued round with its lease taken, or None where its own task must run it: another
    copy holds the lease, its outcome is stored, its job is closed, or this leader met it already;
    or nobody needs it: its message was revoked (a cancel), or its revision is not the job's."""
    if task.id in revoked:
        return None
    try:
        results, job_id, frame, revision = score_arguments(*task.args, **task.kwargs)
        variations, source = round_of(results)
    except (TypeError, ValueError):  # not a call the score task accepts: its own task reports it
        return None
    step = score_step(frame, revision, source)
    if (job_id, step) in seen:  # a duplicate message of a round already met
        return None
    seen.add((job_id, step))
    job = Job(job_id)
    lease = Lease(job, step, while_open=True)
    try:  # with the round's stored outcome (a copy that finished before the lease was free) and the revision
        if not lease.acquire(job.rounds.outcome_read("scored", frame, revision, source), job.revision_read()):
            return None
    except JobClosed:
        return None
    stored, current = lease.read_replies
    if stored or revision != int(current or 0):
        lease.release(finished=True)
        return None
    return WaitingRound(job, frame, revision, source, variations, lease)
