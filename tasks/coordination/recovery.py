"""Resume and the watchdog: re-send exactly the steps that are neither finished nor running.

A running step holds a lease that its worker renews (leases.py). A step whose lease ran out died
with its worker: the watchdog re-drives that step (and only that one) within
``lease_ttl_s + watchdog_interval_s``. A step that keeps dying (``max_redrives``) parks
its job. Queued steps have no lease and are never re-driven: a busy fleet is not a stalled one.
A job whose messages were lost (the broker was wiped) has nothing running and nothing queued:
`framefleet status` shows it stalled after ``stall_after_s`` and `framefleet resume` continues it.
"""

from __future__ import annotations

import logging
import time

import redis
from framefleet.config.celery import (
    ENHANCE_PROMPT,
    FINALIZE_JOB,
    GENERATE_VARIATION,
    JUDGE_CANDIDATES,
    SCORE_VARIATIONS,
    SELECT_VARIATION,
)
from framefleet.config.settings import get_settings
from framefleet.tasks.coordination.broker import queued_tasks
from framefleet.tasks.coordination.dispatch import (
    dispatch_ready,
    send,
    send_all,
    signature,
)
from framefleet.tasks.job.jobs import count_watchdog_round, stale_creates
from framefleet.tasks.job.leases import take_dead_leases
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.states import FrameState

log = logging.getLogger(__name__)

FRAME_TASKS = {GENERATE_VARIATION, SCORE_VARIATIONS, JUDGE_CANDIDATES, SELECT_VARIATION, FINALIZE_JOB}


def resume(job: Job) -> str:
    """Continue a job from its stored state: missing enhancements, then the next frame.

    Steps that hold a live lease are running and steps whose message is still in the broker are
    queued: both are left alone (``_frame_in_flight``). Finished steps are not redone. The frames'
    views are written again from their records first (``Frames.rewrite_views``).
    """
    status = job.progress.read()
    if status.state == "done" or job.cancelled():
        return "nothing to do"
    queued = queued_tasks(job.id)  # the broker first: see _frame_in_flight
    spec = job.spec
    enhancing_now = _enhancements_running(job)
    enhancing = enhancing_now | {task.args[1] for task in queued if task.name == ENHANCE_PROMPT}
    job.frames.rewrite_views()
    frames = job.frames.all()
    frame_steps_busy = _frame_in_flight(job, queued, enhancing_now, frames)
    job.set_active()
    job.progress.write(message=f"Resumed at {status.stage}")
    waiting = [planned.name for planned in spec.plan.frames
               if frames[planned.name].state is FrameState.WAITING and planned.name not in enhancing]
    send_all(job, [signature(ENHANCE_PROMPT, (job.id, name)) for name in waiting])
    sent = [f"enhance {name}" for name in waiting]
    if not frame_steps_busy:
        enqueued = dispatch_ready(job, force=True)
        if enqueued:
            sent.append(enqueued)
    return ", ".join(sent) or "running"


def _enhancements_running(job: Job) -> set[str]:
    """The frames whose enhancement holds a live lease."""
    return {f.name for f in job.spec.plan.frames if job.leases.alive(f"enhance:{f.name}")}


def _frame_in_flight(job: Job, queued: list, enhancing_now: set[str], frames: dict) -> bool:
    """Whether a generation, scoring, selection or finalize step of the job runs or waits, so
    that sending the next frame would send it twice.

    Read the broker (``queued``) first, then the leases, then the stored state: every queue acks
    late, so a step that moves on between two reads is seen in the later one. The next frame's
    own enhancement, while it holds its lease, is about to enqueue that frame itself (before its
    prompt is stored a forced send stops at the frame anyway), and one that finished since the
    first broker read may have sent its round after that read: the broker is read a second time,
    last. An enhancement whose worker died holds no lease; its message waits in ``unacked`` for
    the visibility timeout and holds nothing up. (Narrower races remain, e.g. an enhancement
    whose frame was skipped for the budget sends the frame after it: a second copy of a round
    finds its results stored or their leases held and pays for nothing.)
    """
    alive = any(job.leases.alive(step) for step in job.leases.running_steps() if not step.startswith("enhance:"))
    next_frame = next((f.name for f in job.spec.plan.frames if frames[f.name].status == "pending"), None)
    return (alive or any(task.name in FRAME_TASKS for task in queued)
            or next_frame in enhancing_now
            or any(task.name in FRAME_TASKS for task in queued_tasks(job.id)))


def redrive_dead_steps(job: Job, dead: list[str]) -> list[str]:
    """Re-send the job's steps whose lease ran out (``dead``). Returns the steps re-driven."""
    counts = job.leases.count_redrives(dead)
    for step, count in counts.items():
        if count > get_settings().max_redrives:
            job.park(f"step {step} died {count} times")
            log.error("job %s parked: step %s died %s times", job.id, step, count)
            return []
    job.progress.count_redrives(len(dead))
    frame_redriven = False
    for step in sorted(dead):
        kind, _, name = step.partition(":")
        if kind == "enhance" and job.frames.get(name).state is FrameState.WAITING:
            send(job, ENHANCE_PROMPT, (job.id, name))
        elif kind == "enhance":
            # It died enqueueing the next frame, which it may have taken (GENERATING) with the
            # round unsent (a re-run would find it taken): send the frame here. With a round in
            # flight, re-send the enhancement as any other, which sends the frame only if it is ready.
            if frame_redriven:
                continue
            queued = queued_tasks(job.id)  # the broker first: see _frame_in_flight
            if _frame_in_flight(job, queued, _enhancements_running(job), job.frames.all()):
                send(job, ENHANCE_PROMPT, (job.id, name))
            else:
                frame_redriven = True
                dispatch_ready(job, force=True)
        elif kind == "finalize":
            send(job, FINALIZE_JOB, (job.id, int(name)))
        elif kind == "notify":
            continue  # its message is still unacknowledged: Celery redelivers it (sent-marker dedups)
        elif not frame_redriven:
            # A generation, scoring, judge or selection step: re-send the frame's round. Its stored
            # variations, scores and verdict are returned without new work; the dead step runs again.
            frame_redriven = True
            dispatch_ready(job, force=True)
    log.warning("job %s: re-drove %s (their workers stopped renewing their leases)", job.id, sorted(dead))
    return sorted(dead)


def watchdog_round() -> dict:
    """Re-drive the steps whose lease ran out and discard creates that never finished: both read
    from indexes of what is due, so a round's work is bounded by what it finds, not by the jobs in
    Redis. One broken job never stops the round: it is logged, counted and parked (its state cannot
    be read), and the round goes on with the next job."""
    acted, failed, errors = {}, {}, {}
    count_watchdog_round()
    work = [(job_id, steps) for job_id, steps in take_dead_leases().items()]
    work += [(job_id, None) for job_id in stale_creates(time.time() - get_settings().create_timeout_s)]
    for job_id, dead in work:
        job = Job(job_id)
        try:
            if (done := watch_job(job, dead)) is not None:
                acted[job_id] = done
        except redis.RedisError as error:  # Redis restarting: not the job's fault, next round retries
            log.warning("watchdog: job %s skipped this round: %s", job_id, error)
            errors[job_id] = str(error)
        except Exception as error:  # noqa: BLE001 — isolate each job
            log.exception("watchdog: job %s cannot be watched; parking it", job_id)
            failed[job_id] = f"{type(error).__name__}: {error}"
            try:
                job.park(f"state unreadable ({type(error).__name__}: {error})")
            except Exception:  # noqa: BLE001 — Redis itself failing: the next round tries again
                log.exception("watchdog: could not park job %s", job_id)
    return {"acted": acted, "parked": failed, "errors": errors}


def watch_job(job: Job, dead: list[str] | None) -> str | None:
    """One job's part of a watchdog round: its dead steps, or (``dead`` None) its stale create."""
    if dead is None:
        if job.progress.read().stage == "creating":
            log.warning("job %s: its create never finished; discarding it (the id is free again)", job.id)
            job.discard()
            return "discarded"
        return None
    if not job.exists() or job.progress.read().state == "done":
        return None  # gone, or finished (a late step's lease ran out after the job ended)
    if redriven := redrive_dead_steps(job, dead):
        return "re-drove " + ", ".join(redriven)
    return None
