"""Resume and the watchdog: re-send exactly the steps that are neither finished nor running.

A running step holds a lease that its worker renews (leases.py). A step whose lease ran out died
with its worker: the watchdog re-drives that step (and only that one) within
``lease_ttl_s + watchdog_interval_s``. A step that keeps dying (``max_redrives``) parks
its job. Queued steps have no lease and are never re-driven: a busy fleet is not a stalled one.
A job whose messages were lost has nothing running and nothing queued: a message a worker was
taking when Redis shut down (popped, its reply never sent), or every message when the broker was
wiped. The watchdog resumes such a job once it has made no progress for ``stall_after_s``
(``sweep_stalled``); `framefleet status` shows it stalled and `framefleet resume` continues it by
hand.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import kombu.exceptions
import redis
from celery.exceptions import SoftTimeLimitExceeded
from framefleet.config.celery import (
    ENHANCE_PROMPT,
    FINALIZE_JOB,
    GENERATE_VARIATION,
    JUDGE_CANDIDATES,
    SCORE_VARIATIONS,
    SELECT_VARIATION,
)
from framefleet.config.settings import get_settings
from framefleet.tasks.coordination.broker import QueuedTask, broker_tasks, job_ids_of, queued_tasks
from framefleet.tasks.coordination.dispatch import (
    dispatch_ready,
    send,
    send_all,
    signature,
)
from framefleet.tasks.job.jobs import (
    count_watchdog_round,
    quiet_jobs,
    stale_creates,
    stall_sweep_due,
    stall_sweep_failed,
)
from framefleet.tasks.job.leases import take_dead_leases
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.states import FrameState

log = logging.getLogger(__name__)

FRAME_TASKS = {GENERATE_VARIATION, SCORE_VARIATIONS, JUDGE_CANDIDATES, SELECT_VARIATION, FINALIZE_JOB}


def resume(job: Job, broker: list[QueuedTask] | None = None) -> str:
    """Continue a job from its stored state: missing enhancements, then the next frame.

    Steps that hold a live lease are running and steps whose message is still in the broker are
    queued: both are left alone (``_frame_in_flight``). Finished steps are not redone. The frames'
    views are written again from their records first (``Frames.rewrite_views``); the status is
    written only when something was sent. ``broker``: the job's messages in a read of the broker
    made before this call (the stall sweep's), used as the first.
    """
    status = job.progress.read()
    if status.state == "done" or job.cancelled():
        return "nothing to do"
    queued = queued_tasks(job.id) if broker is None else broker  # the broker first: see _frame_in_flight
    spec = job.spec
    enhancing_now = _enhancements_running(job)
    enhancing = enhancing_now | {task.args[1] for task in queued if task.name == ENHANCE_PROMPT}
    job.frames.rewrite_views()
    frames = job.frames.all()
    frame_steps_busy = _frame_in_flight(job, queued, enhancing_now, frames)
    waiting = [planned.name for planned in spec.plan.frames
               if frames[planned.name].state is FrameState.WAITING and planned.name not in enhancing]
    send_all(job, [signature(ENHANCE_PROMPT, (job.id, name)) for name in waiting])
    sent = [f"enhance {name}" for name in waiting]
    if not frame_steps_busy and (enqueued := dispatch_ready(job, force=True)):
        sent.append(enqueued)
    if not sent:  # nothing written either: a job that only looked stalled stays as it was
        return "running"
    job.set_active()
    job.progress.write(message=f"Resumed at {status.stage}: sent {', '.join(sent)}")
    return ", ".join(sent)


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


STALL_SWEEP_LIMIT = 100  # stalled jobs resumed per sweep, the quietest first
STALL_SWEEP_BUDGET_S = 30.0  # a sweep resumes no more after this long (the watchdog's soft limit is 120 s)
# Errors that say Redis or the broker connection failed, not the job: the job is skipped this round.
TRANSIENT = (redis.RedisError, ConnectionError, TimeoutError, kombu.exceptions.KombuError)
# Between the stall sweep's two reads of the broker: a message a worker is taking (off its queue,
# not yet in `unacked`) in the first is in `unacked` by the second.
BROKER_REREAD_S = 0.1
Report = dict[str, dict[str, str]]


def watchdog_round() -> Report:
    """Re-drive the steps whose lease ran out, discard creates that never finished, and (every
    ``stall_after_s / 2``) resume the jobs that stalled. The first two read from indexes of what is
    due; the stall sweep reads the active list. So a round's work is bounded by what it finds and by
    the jobs in flight, never by the finished jobs in Redis. One broken job never stops the round:
    it is logged, counted and parked (its state cannot be read), and the round goes on with the next."""
    report: Report = {"acted": {}, "parked": {}, "errors": {}}
    settings = get_settings()
    count_watchdog_round()
    for job_id, dead in take_dead_leases().items():
        watch(report, job_id, functools.partial(redrive_dead_steps_of, dead=dead))
    for job_id in stale_creates(time.time() - settings.create_timeout_s):
        watch(report, job_id, discard_stale_create)
    if stall_sweep_due(max(settings.stall_after_s / 2, settings.watchdog_interval_s)):
        sweep_stalled(report, time.time() - settings.stall_after_s)  # quiet by the workers' clock, as written
    return report


def watch(report: Report, job_id: str, action: Callable[[Job], str | None]) -> None:
    """One job's part of a round, isolated: what ``action`` did goes into ``report``."""
    job = Job(job_id)
    try:
        if (done := action(job)) is not None:
            report["acted"][job_id] = done
    except SoftTimeLimitExceeded:
        raise
    except TRANSIENT as error:  # Redis restarting: not the job's fault, next round retries
        log.warning("watchdog: job %s skipped this round: %s", job_id, error)
        report["errors"][job_id] = str(error)
    except Exception as error:  # noqa: BLE001 — isolate each job
        log.exception("watchdog: job %s cannot be watched; parking it", job_id)
        report["parked"][job_id] = f"{type(error).__name__}: {error}"
        try:
            job.park(f"state unreadable ({type(error).__name__}: {error})")
        except Exception:  # noqa: BLE001 — Redis itself failing: the next round tries again
            log.exception("watchdog: could not park job %s", job_id)


def sweep_stalled(report: Report, updated_before: float) -> None:
    """Resume up to STALL_SWEEP_LIMIT stalled jobs (``stalled_jobs``), within STALL_SWEEP_BUDGET_S;
    a job this round already acted on is left for the next sweep."""
    try:
        stalled, broker = stalled_jobs(updated_before)
    except TRANSIENT as error:
        log.warning("watchdog: no stall sweep this round (the next round tries again): %s", error)
        report["errors"]["stall sweep"] = str(error)
        stall_sweep_failed()
        return
    deadline = time.monotonic() + STALL_SWEEP_BUDGET_S
    for job_id in stalled[:STALL_SWEEP_LIMIT]:
        if time.monotonic() > deadline:
            break
        if job_id not in report["acted"]:
            watch(report, job_id, functools.partial(resume_stalled, updated_before=updated_before, broker=broker))


def stalled_jobs(updated_before: float) -> tuple[list[str], list[QueuedTask]]:
    """The active jobs without progress since ``updated_before`` that have no message in the broker,
    the quietest first (two reads of the broker for all of them: a job waiting in a busy queue is
    not stalled), and what the reads found."""
    quiet = quiet_jobs(updated_before)
    if not quiet:
        return [], []
    broker = broker_tasks()
    time.sleep(BROKER_REREAD_S)
    broker += broker_tasks()
    queued = {job_id for task in broker for job_id in job_ids_of(task)}
    return [job_id for job_id in quiet if job_id not in queued], broker


def resume_stalled(job: Job, updated_before: float, broker: list[QueuedTask]) -> str | None:
    """Resume a stalled job unless a step of it holds a lease (live, or run out and left to the
    re-drive of dead steps) or it moved on since the sweep read it: resume's own reads
    (``broker``, the sweep's, first) decide what to send; a cancelled job gets its finalize again.
    One that stalls at the same point after ``max_redrives`` resumes there is parked instead of
    resumed for ever."""
    if job.leases.running_steps():
        return None
    status = job.progress.read()
    if status.state == "done" or status.updated_at >= updated_before:
        return None
    point = f"stalled:{status.revision}/{status.frames_done}"
    if (resumed := job.leases.redrives(point)) >= get_settings().max_redrives:
        job.park(f"stalled again at {status.stage} after {resumed} resumes")
        log.error("job %s parked: stalled again at %s after %s resumes", job.id, status.stage, resumed)
        return "parked"
    if job.cancelled():
        send(job, FINALIZE_JOB, (job.id, status.revision))
        sent = "finalize of the cancelled revision"
    else:
        sent = resume(job, broker=[task for task in broker if job.id in job_ids_of(task)])
        if sent in ("running", "nothing to do"):
            return None
    job.leases.count_redrives([point])
    job.progress.count_redrives(1)
    log.warning("job %s: no progress for %.0fs with nothing running or queued; resumed (%s)", job.id,
                status.stalled_for(time.time()), sent)
    return f"resumed: {sent}"


def discard_stale_create(job: Job) -> str | None:
    if job.progress.read().stage == "creating":
        log.warning("job %s: its create never finished; discarding it (the id is free again)", job.id)
        job.discard()
        return "discarded"
    return None


def redrive_dead_steps_of(job: Job, dead: list[str]) -> str | None:
    """The job's dead steps (``redrive_dead_steps``), unless it is gone or finished."""
    if not job.exists() or job.progress.read().state == "done":
        return None  # gone, or finished (a late step's lease ran out after the job ended)
    if redriven := redrive_dead_steps(job, dead):
        return "re-drove " + ", ".join(redriven)
    return None
