"""The fleet's lists of jobs: recent (newest first), active (not finished: the watchdog's list),
parked; and a page of job summaries read in one round trip."""

from __future__ import annotations

import contextlib

import redis
from framefleet.tasks.job.keys import (
    ACTIVE_JOBS,
    CREATING_JOBS,
    PARKED_JOBS,
    RECENT_JOBS,
    STALL_SWEEP,
    WATCHDOG_ROUNDS,
    JobKeys,
)
from framefleet.tasks.job.progress import typed
from framefleet.tasks.job.records import JobStatus, JobSummary
from framefleet.tasks.job.redis import script, state_client
from pydantic import ValidationError


def recent_jobs(limit: int, client: redis.Redis | None = None) -> list[str]:
    """Job ids, newest first."""
    return (client or state_client()).zrevrange(RECENT_JOBS, 0, limit - 1)


def active_jobs(client: redis.Redis | None = None) -> set[str]:
    return (client or state_client()).smembers(ACTIVE_JOBS)


def active_job_ids(limit: int, client: redis.Redis | None = None) -> list[str]:
    """The newest ``limit`` jobs on the active list, newest first (by submission)."""
    client = client or state_client()
    active = list(client.smembers(ACTIVE_JOBS))
    submitted = client.zmscore(RECENT_JOBS, active) if active else []
    ordered = sorted(zip(active, submitted), key=lambda pair: -(pair[1] or 0))
    return [job_id for job_id, _ in ordered[:limit]]


def parked_reasons(job_ids: list[str], client: redis.Redis | None = None) -> dict[str, str]:
    """Why each of ``job_ids`` that the watchdog parked was parked (read for those ids only: the
    parked list keeps job_ttl_s of them)."""
    reasons = (client or state_client()).hmget(PARKED_JOBS, job_ids) if job_ids else []
    return {job_id: why for job_id, why in zip(job_ids, reasons) if why is not None}


def statuses(job_ids: list[str], client: redis.Redis | None = None) -> list[dict | None]:
    """The status fields of several jobs in one round trip (None: no such job)."""
    pipe = (client or state_client()).pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(JobKeys(job_id).status)
    return [typed(raw) or None for raw in pipe.execute()]


def job_summaries(active_only: bool, limit: int) -> list[JobSummary]:
    """The newest ``limit`` of the recent jobs, or of the active ones (so running jobs older than
    the newest ``limit`` are listed too), with one pipeline of status reads."""
    job_ids = active_job_ids(limit) if active_only else recent_jobs(limit)
    parked = parked_reasons(job_ids)
    rows = []
    for job_id, raw in zip(job_ids, statuses(job_ids)):
        if raw is None:  # expired
            continue
        try:
            status = JobStatus.model_validate(raw)
        except ValidationError:  # its status cannot be read: the watchdog parks such a job
            rows.append(JobSummary(job_id=job_id, state="done", stage="parked", outcome="failed",
                                   parked=parked.get(job_id, "status unreadable")))
            continue
        if active_only and status.state == "done":
            continue
        rows.append(JobSummary(job_id=job_id, kind=status.kind, state=status.state, stage=status.stage,
                               revision=status.revision, outcome=status.outcome, percent=status.percent,
                               updated_at=status.updated_at, parked=parked.get(job_id)))
    return rows


def count_watchdog_round() -> None:
    state_client().incr(WATCHDOG_ROUNDS)


def stale_creates(started_before: float, limit: int = 1000) -> list[str]:
    """Jobs whose create began before ``started_before`` and never finished (its worker died)."""
    return state_client().zrangebyscore(CREATING_JOBS, "-inf", started_before, start=0, num=limit)


def stall_sweep_due(period_s: float) -> bool:
    """True when the fleet's last stall sweep began ``period_s`` or more ago by Redis's clock, and
    then it is this caller's (one script: a second watchdog copy finds it taken; each caller
    judges by its own period)."""
    return bool(script(state_client(), "stall_sweep_due")(keys=[STALL_SWEEP], args=[int(period_s * 1000)]))


def stall_sweep_failed() -> None:
    """A sweep that could not read what it needs: the next round may sweep at once (best effort:
    Redis may be what failed)."""
    with contextlib.suppress(redis.RedisError):
        state_client().delete(STALL_SWEEP)


def quiet_jobs(updated_before: float) -> list[str]:
    """The active jobs whose status has not changed since ``updated_before``, the quietest first;
    jobs still being created are left to ``stale_creates``. Reads the active list and three status
    fields of each job on it, in two round trips."""
    client = state_client()
    job_ids = list(client.smembers(ACTIVE_JOBS))
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(JobKeys(job_id).status, "state", "stage", "updated_at")
    quiet = []
    for job_id, (state, stage, updated_at) in zip(job_ids, pipe.execute()):
        try:
            updated = float(updated_at)
        except (TypeError, ValueError):  # gone, or unreadable: the job's own steps or resume report it
            continue
        if state != "done" and stage != "creating" and updated < updated_before:
            quiet.append((updated, job_id))
    return [job_id for _, job_id in sorted(quiet)]
