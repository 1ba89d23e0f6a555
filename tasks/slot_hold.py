"""Holding a running job's image slots through the gap between two of its rounds.

Continuation first (tasks/scheduling.py) orders the queue, but between two frames of a job its
next round does not exist yet: the frame is being scored and selected (tens of milliseconds
here, more with real models and S3). A slot freed in that gap took a new job's variation from
`images:9`, and the job's next round then waited a whole image for a slot, frame after frame.

So each variation of a frame with a later frame to run sends, just before it returns and while
new jobs' first frames wait in `images:9`, one ``framefleet.images.hold_slot`` at continuation
priority. The slot it frees takes the holder (priority 0 is served first), which waits until
the job's next round is enqueued and then returns, handing the slot to that round. A holder never waits long: ``slot_hold_siblings_s`` at
most while its round's other variations still run (a straggler is the cut's business, not the
holder's), ``slot_hold_s`` at most once the round is complete, and not at all once the job is
cancelled or finalizing, or in a worker whose pool also serves other queues (it could block the
scoring or selection it waits for). It pays for nothing and writes nothing, so a redelivered or
late copy is harmless. FIFO scheduling, or ``slot_hold_s`` = 0, sends none; nor does a variation
when no new job waits (a job alone pays nothing for holding).
"""

from __future__ import annotations

import time

from framefleet.config.celery import TASK_QUEUES
from framefleet.config.settings import get_settings
from framefleet.tasks.app import app
from framefleet.tasks.bootstrap import consumed_queues
from framefleet.tasks.broker import jobs_waiting_for
from framefleet.tasks.scheduling import CONTINUATION
from framefleet.tasks.state import JobSpec, JobState

HOLD_SLOT = "framefleet.images.hold_slot"
CHECK_S = 0.05  # how often a holder re-reads its round and job while it waits


def send_slot_holder(state: JobState, spec: JobSpec, frame: str, revision: int, stage: str, count: int) -> bool:
    """Called by a variation of ``frame`` (a round of ``count``) before it returns. False when no
    holder is due: FIFO scheduling, holding off, the frame is the job's last, or no new job waits."""
    settings = get_settings()
    if settings.scheduling == "fifo" or settings.slot_hold_s == 0:
        return False
    if spec.plan.index_of(frame) == len(spec.plan.frames) - 1:
        return False  # (a revision's later frames may be settled: its finalize then ends the hold)
    if not jobs_waiting_for(TASK_QUEUES[HOLD_SLOT]):
        return False  # no new job could take the slot: holding would only add a step
    # Not recorded with the job's task ids: a cancel need not revoke it, it ends by itself.
    app.signature(HOLD_SLOT, args=(state.job_id, frame, revision, stage, count, state.rounds_enqueued()),
                  priority=CONTINUATION).apply_async()
    return True


@app.task(name=HOLD_SLOT, ignore_result=True)
def hold_slot(job_id: str, frame: str, revision: int, stage: str, count: int, rounds_seen: int) -> dict:
    """Keep this slot until the job enqueues its next round (see the module docstring)."""
    state, settings = JobState(job_id), get_settings()
    started = time.monotonic()
    if consumed_queues() - {"images"}:  # one pool with other queues: a holder could block their steps
        return {"job_id": job_id, "frame": frame, "held_s": 0.0, "ended": "worker serves other queues"}
    complete_since = None
    while True:
        rounds, recorded, closed = state.hold_view(frame, revision, stage, count)
        now = time.monotonic()
        if rounds > rounds_seen:
            ended = "next round enqueued"
            break
        if closed:
            ended = "job closed"
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
        # Woken the moment the next round is enqueued; every CHECK_S the round and job are re-read.
        if state.r.blpop([state.round_wake_key(rounds_seen + 1)], timeout=min(left, CHECK_S)):
            ended = "next round enqueued"
            break
    return {"job_id": job_id, "frame": frame, "held_s": round(time.monotonic() - started, 3), "ended": ended}
