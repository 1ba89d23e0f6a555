"""Resume and the watchdog: re-send exactly the steps that are neither finished nor running.

A running step holds a lease that its worker renews (leases.py). A step listed as running
whose lease has expired died with its worker: the watchdog re-drives that step (and only that
one) within ``lease_ttl_s + watchdog_interval_s``. A step that keeps dying (``max_redrives``) parks
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
from framefleet.tasks.coordination.dispatch import dispatch_ready, send
from framefleet.tasks.job.jobs import active_jobs, count_watchdog_round
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.states import FrameState

log = logging.getLogger(__name__)

FRAME_TASKS = {GENERATE_VARIATION, SCORE_VARIATIONS, JUDGE_CANDIDATES, SELECT_VARIATION, FINALIZE_JOB}


def resume(job: Job) -> str:
    """Continue a job from its stored state: missing enhancements, then the next frame.

    Steps that hold a live lease are running and steps whose message is still in the broker are
    queued: both are left alone (``_frame_in_flight``). Finished steps are not redone.
    """
    status = job.progress.read()
    if status.state == "done" or job.cancelled():
        return "nothing to do"
    queued = queued_tasks(job.id)  # the broker first: see _frame_in_flight
    spec = job.spec
    enhancing_now = _enhancements_running(job)
    enhancing = enhancing_now | {task.args[1] for task in queued if task.name == ENHANCE_PROMPT}
    frames = job.frames.all()
    frame_steps_busy = _frame_in_flight(job, queued, enhancing_now, frames)
    job.set_active()
    job.progress.write(message=f"Resumed at {status.stage}")
    sent = []
    for planned in spec.plan.frames:
        if frames[planned.name].state is FrameState.WAITING and planned.name not in enhancing:
            send(job, ENHANCE_PROMPT, (job.id, planned.name))
            sent.append(f"enhance {planned.name}")
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


def redrive_dead_steps(job: Job) -> list[str]:
    """Re-send the job's steps whose lease expired. Returns the steps re-driven."""
    dead = job.leases.take_dead()
    if not dead:
        return []
    for step, count in dead.items():
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


def watch_job(job: Job, now: float) -> str | None:
    """One job's watchdog round. Returns what was done, or None."""
    settings = get_settings()
    status = job.progress.read()
    if status.state == "done":
        job.set_active(False)
        return None
    if status.stage == "creating":
        if now - status.updated_at > settings.create_timeout_s:
            log.warning("job %s: its create never finished; discarding it (the id is free again)", job.id)
            job.discard()
            return "discarded"
        return None
    if redriven := redrive_dead_steps(job):
        return "re-drove " + ", ".join(redriven)
    return None


def watchdog_round() -> dict:
    """Watch every active job. One broken job never stops the round: it is logged, counted and
    parked (its state cannot be read), and the round goes on with the next job."""
    now, acted, failed, errors = time.time(), {}, {}, {}
    count_watchdog_round()
    for job_id in sorted(active_jobs()):
        job = Job(job_id)
        try:
            if (done := watch_job(job, now)) is not None:
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
