"""Holding a running job's image slots through the gap between two of its rounds.

Continuation first (dispatch.py) orders the queue, but between two frames of a job its
next round does not exist yet: the frame is being scored and selected (tens of milliseconds
here, more with real models and S3). A slot freed in that gap would take a new job's variation
from the lower priority lists, and the job's next round would then wait a whole image for a slot,
frame after frame.

So a variation of a frame with a later frame to run, while new jobs' first frames wait, keeps its
own slot after it returns: its record is stored and its chord counted, and
then, before its message is acknowledged (the worker takes no other message for that slot until
then), it waits until the job's next round is enqueued (``HoldsSlot.after_return``). The slot
then takes that round, which priority 0 serves first. A hold never keeps a slot from its own
round: when a sibling has neither started nor finished (it waits for a slot) as the variation is
stored, the hold ends at once. It never lasts long either:
``slot_hold_siblings_s`` at most while the round's other variations still run (a straggler is
the cut's business, not the hold's), ``slot_hold_s`` at most once the round is seen complete (as
the variation is stored, or at the siblings' bound), not at all in a worker whose pool also
serves other queues (it could block the scoring or selection it waits for), and ends at once
when the job is cancelled or finalizing (that write wakes the holds with a 'closed' token). The
round and job are read with the variation's record and again only at those bounds; the wake-up
ends a hold the moment the next round is enqueued, so a hold usually costs one blocking read.
It pays for nothing and writes nothing. FIFO scheduling, or ``slot_hold_s`` = 0, holds nothing;
nor does a variation when no new job waits (a job alone pays nothing for holding). The hold runs
in the variation's own task, so it adds no message at the moment a round hands over.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

from celery import Task, states
from framefleet.config.celery import GENERATE_VARIATION, TASK_QUEUES
from framefleet.config.settings import get_settings
from framefleet.tasks.coordination.broker import jobs_waiting_for
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.spec import JobSpec
from framefleet.tasks.runtime.bootstrap import consumed_queues

log = logging.getLogger(__name__)

class SlotHold(NamedTuple):
    """What a hold waits for: the job's next round after the rounds in ``seen`` (the round and
    job as the variation left them: Rounds.hold_view)."""

    job_id: str
    frame: str
    revision: int
    source: str
    count: int
    seen: tuple[int, int, int, bool]


def holds_slots() -> bool:
    """Whether variations may hold their slots (not with FIFO scheduling or holding off)."""
    settings = get_settings()
    return settings.scheduling != "fifo" and settings.slot_hold_s > 0


def slot_hold_due(job: Job, spec: JobSpec, frame: str, revision: int, source: str, count: int) -> SlotHold | None:
    """Called by a variation of ``frame`` (a round of ``count``) before it returns: the hold it
    keeps its slot for, or None: FIFO scheduling, holding off, the frame is the job's last, or no
    new job waits. The round and job are read before the chord can complete (with the variation's
    record where ``Rounds.prefetch_hold_view`` asked for that): the hold starts from that view."""
    if not holds_slots():
        return None
    if spec.plan.index_of(frame) == len(spec.plan.frames) - 1:
        return None  # (a revision's later frames may be settled: its finalize then ends the hold)
    if not jobs_waiting_for(TASK_QUEUES[GENERATE_VARIATION]):
        return None  # no new job could take the slot
    return SlotHold(job.id, frame, revision, source, count, job.rounds.hold_view(frame, revision, source, count))


def hold_slot(job_id: str, frame: str, revision: int, source: str, count: int,
              seen: tuple[int, int, int, bool]) -> dict:
    """Keep this slot until the job enqueues its next round (see the module docstring)."""
    job, settings = Job(job_id), get_settings()
    started = time.monotonic()
    if consumed_queues() - {"images"}:  # one pool with other queues: a hold could block their steps
        return {"job_id": job_id, "frame": frame, "held_s": 0.0, "ended": "worker serves other queues"}
    complete_since = None
    rounds_seen, view = seen[0], seen
    while True:
        rounds, recorded, unstarted, closed = view
        now = time.monotonic()
        if rounds > rounds_seen:
            ended = "next round enqueued"
            break
        if closed:
            ended = "job closed"
            break
        if unstarted:
            ended = "a sibling waits for a slot"
            break
        if recorded < count:
            left = settings.slot_hold_siblings_s - (now - started)
            ended = "round still running"
        else:
            complete_since = complete_since or now
            left = settings.slot_hold_s - (now - complete_since)
            ended = "no next round in time"
        if left <= 0:
            break
        # Woken the moment the next round is enqueued or the job closes; else, at this bound, the
        # round and job are read again (the round may have completed meanwhile, which allows the
        # longer bound).
        woken = job.rounds.wait_for_round(rounds_seen + 1, timeout_s=left)
        if woken is not None:
            ended = "job closed" if woken == "closed" else "next round enqueued"
            break
        view = job.rounds.hold_view(frame, revision, source, count)
    return {"job_id": job_id, "frame": frame, "held_s": round(time.monotonic() - started, 3), "ended": ended}


class HoldsSlot(Task):
    """A task that may keep its slot after it returns: the body sets ``request.slot_hold``."""

    def after_return(self, status, retval, task_id, args, kwargs, einfo) -> None:
        hold = getattr(self.request, "slot_hold", None)
        if status != states.SUCCESS or hold is None:
            return
        try:
            held = hold_slot(*hold)
            log.debug("job %s: slot held %.3f s after %s (%s)", held["job_id"], held["held_s"], held["frame"],
                      held["ended"])
        except Exception as error:  # noqa: BLE001 — an optimisation: the slot is simply freed
            log.warning("job %s: slot not held after %s: %s", hold.job_id, hold.frame, error)
