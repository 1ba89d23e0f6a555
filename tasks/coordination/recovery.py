"""Resume and the watchdog: re-send exactly the steps that are neither finished nor running.

A running step holds a lease that its worker renews (tasks/job/leases.py). A step listed as running
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

from framefleet.config.celery import ENHANCE_PROMPT, FINALIZE_JOB, GENERATE_VARIATION, SCORE_VARIATIONS, SELECT_VARIATION
from framefleet.config.settings import get_settings
from framefleet.tasks.coordination.broker import queued_tasks
from framefleet.tasks.job.leases import lease_alive, running_steps, take_dead_steps
from framefleet.tasks.coordination.dispatch import dispatch_ready, send
from framefleet.tasks.job.redis import state_client
from framefleet.tasks.job.state import JobState, active_jobs

log = logging.getLogger(__name__)
WATCHDOG_ROUNDS = "framefleet:watchdog:rounds"  # how many rounds ran (operators and tests see it ran)


FRAME_TASKS = {GENERATE_VARIATION, SCORE_VARIATIONS,
               SELECT_VARIATION, FINALIZE_JOB}


def resume(state: JobState) -> str:
    """Continue a job from its stored state: missing enhancements, then the next frame.

    Steps that hold a live lease are running and steps whose message is still in the broker are
    queued: both are left alone (``_frame_in_flight``). Finished steps are not redone.
    """
    status = state.status()
    if status.state == "done" or state.cancelled():
        return "nothing to do"
    queued = queued_tasks(state.job_id)  # the broker first: see _frame_in_flight
    spec = state.spec()
    enhancing_now = _enhancements_running(state, spec)
    enhancing = enhancing_now | {task.args[1] for task in queued if task.name == ENHANCE_PROMPT}
    frames = state.frames()
    frame_steps_busy = _frame_in_flight(state, spec, queued, enhancing_now, frames)
    state.set_active(True)
    state.update_status(message=f"Resumed at {status.stage}")
    sent = []
    for planned in spec.plan.frames:
        if frames[planned.name].enhanced_prompt is None and planned.name not in enhancing:
            send(state, ENHANCE_PROMPT, (state.job_id, planned.name))
            sent.append(f"enhance {planned.name}")
    if not frame_steps_busy:
        enqueued = dispatch_ready(state, force=True)
        if enqueued:
            sent.append(enqueued)
    return ", ".join(sent) or "running"


def _enhancements_running(state: JobState, spec) -> set[str]:
    """The frames whose enhancement holds a live lease."""
    return {f.name for f in spec.plan.frames if lease_alive(state.r, state.job_id, f"enhance:{f.name}")}


def _frame_in_flight(state: JobState, spec, queued: list, enhancing_now: set[str], frames: dict) -> bool:
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
    alive = any(lease_alive(state.r, state.job_id, step) for step in running_steps(state.r, state.job_id)
                if not step.startswith("enhance:"))
    next_frame = next((f.name for f in spec.plan.frames if frames[f.name].status == "pending"), None)
    return (alive or any(task.name in FRAME_TASKS for task in queued)
            or next_frame in enhancing_now
            or any(task.name in FRAME_TASKS for task in queued_tasks(state.job_id)))


def redrive_dead_steps(state: JobState) -> list[str]:
    """Re-send the job's steps whose lease expired. Returns the steps re-driven."""
    dead = take_dead_steps(state.r, state.job_id, state.ttl)
    if not dead:
        return []
    for step, count in dead.items():
        if count > get_settings().max_redrives:
            state.park(f"step {step} died {count} times")
            log.error("job %s parked: step %s died %s times", state.job_id, step, count)
            return []
    state.count_redrives(len(dead))
    frame_redriven = False
    for step in sorted(dead):
        kind, _, name = step.partition(":")
        if kind == "enhance" and state.frame(name).enhanced_prompt is None:
            send(state, ENHANCE_PROMPT, (state.job_id, name))
        elif kind == "enhance":
            # It died enqueueing the next frame, whose claim it may hold with the round unsent (a
            # re-run would find the claim taken): send the frame here. With a round in flight,
            # re-send the enhancement as any other, which sends the frame only if it is unclaimed.
            if frame_redriven:
                continue
            queued = queued_tasks(state.job_id)  # the broker first: see _frame_in_flight
            spec = state.spec()
            if _frame_in_flight(state, spec, queued, _enhancements_running(state, spec), state.frames()):
                send(state, ENHANCE_PROMPT, (state.job_id, name))
            else:
                frame_redriven = True
                dispatch_ready(state, force=True)
        elif kind == "finalize":
            send(state, FINALIZE_JOB, (state.job_id, int(name)))
        elif kind == "notify":
            continue  # its message is still unacknowledged: Celery redelivers it (sent-marker dedups)
        elif not frame_redriven:
            # A generation, scoring or selection step: re-send the frame's round. Its stored
            # variations and scores are returned without new work; the dead step runs again.
            frame_redriven = True
            dispatch_ready(state, force=True)
    log.warning("job %s: re-drove %s (their workers stopped renewing their leases)", state.job_id, sorted(dead))
    return sorted(dead)


def watch_job(state: JobState, now: float) -> str | None:
    """One job's watchdog round. Returns what was done, or None."""
    settings = get_settings()
    status = state.status()
    if status.state == "done":
        state.set_active(False)
        return None
    if status.stage == "creating":
        if now - status.updated_at > settings.create_timeout_s:
            log.warning("job %s: its create never finished; discarding it (the id is free again)", state.job_id)
            state.discard()
            return "discarded"
        return None
    if redriven := redrive_dead_steps(state):
        return "re-drove " + ", ".join(redriven)
    return None


def watchdog_round() -> dict:
    """Watch every active job. One broken job never stops the round: it is logged, counted and
    parked (its state cannot be read), and the round goes on with the next job."""
    now, acted, failed, errors = time.time(), {}, {}, {}
    state_client().incr(WATCHDOG_ROUNDS)
    for job_id in sorted(active_jobs()):
        state = JobState(job_id)
        try:
            if (done := watch_job(state, now)) is not None:
                acted[job_id] = done
        except redis.RedisError as error:  # Redis restarting: not the job's fault, next round retries
            log.warning("watchdog: job %s skipped this round: %s", job_id, error)
            errors[job_id] = str(error)
        except Exception as error:  # noqa: BLE001 — isolate each job
            log.exception("watchdog: job %s cannot be watched; parking it", job_id)
            failed[job_id] = f"{type(error).__name__}: {error}"
            try:
                state.park(f"state unreadable ({type(error).__name__}: {error})")
            except Exception:  # noqa: BLE001 — Redis itself failing: the next round tries again
                log.exception("watchdog: could not park job %s", job_id)
    return {"acted": acted, "parked": failed, "errors": errors}
