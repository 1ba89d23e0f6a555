"""The watchdog on the real test Redis: one broken job never stops it; it re-drives exactly the
steps whose lease expired; a step that keeps dying parks its job; a half-made create is discarded;
a job with nothing running or queued and no progress for FRAMEFLEET_STALL_AFTER_S is resumed."""

from __future__ import annotations

import time

import kombu.exceptions
import pytest
from framefleet.config.celery import FINALIZE_JOB
from framefleet.config.settings import get_settings
from framefleet.tasks.coordination import recovery
from framefleet.tasks.coordination.broker import queued_tasks
from framefleet.tasks.coordination.recovery import watchdog_round
from framefleet.tasks.job.jobs import active_jobs, stall_sweep_due
from framefleet.tasks.job.keys import ACTIVE_JOBS, CREATING_JOBS, LEASES, PARKED_JOBS, STALL_SWEEP
from framefleet.tasks.job.model import Job

from tests.helpers import create_here, purge_queues, storyboard_request, unique_id

pytestmark = pytest.mark.integration


def new_job(prefix: str) -> Job:
    return Job(create_here("storyboard", storyboard_request(unique_id(prefix), 1)))


def test_a_broken_job_is_parked_and_the_jobs_after_it_are_still_redriven(local_steps):
    broken, dead, healthy = new_job("wd-a-broken"), new_job("wd-b-dead"), new_job("wd-c-healthy")
    broken.r.hset(broken.keys.status, "percent", "NaN-and-then-some")  # unreadable
    # Started, then its worker died: the lease ran out (indexed, its key gone).
    for job in (broken, dead):
        job.r.zadd(LEASES, {job.keys.lease("enhance:clip_001_start"): 0})
    healthy.r.zadd(LEASES, {healthy.keys.lease("enhance:clip_001_start"): 0})  # due, but still held
    healthy.r.set(healthy.keys.lease("enhance:clip_001_start"), "alive", px=60_000)
    tasks_before = len(dead.ledger.task_ids())

    report = watchdog_round()

    assert broken.id in report["parked"] and broken.id in broken.r.hgetall(PARKED_JOBS)
    assert broken.id not in active_jobs()
    assert report["acted"][dead.id] == "re-drove enhance:clip_001_start"
    assert dead.progress.read().redrives == 1 and len(dead.ledger.task_ids()) == tasks_before + 1  # one enhance re-sent
    assert healthy.id not in report["acted"] and healthy.progress.read().redrives == 0  # live lease: left alone
    assert watchdog_round()["acted"].get(broken.id) is None  # parked jobs are not retried forever


def test_a_step_that_keeps_dying_parks_its_job(local_steps, monkeypatch):
    state = new_job("wd-dies")
    step = "generate:clip_001_start/0/enhanced/1"
    state.r.zadd(LEASES, {state.keys.lease(step): 0})
    state.r.hset(state.keys.redrives, step, 3)  # re-driven 3 times already, and dead again
    watchdog_round()
    assert "died 4 times" in state.r.hget(PARKED_JOBS, state.id)
    status = state.progress.read()
    assert status.state == "done" and status.outcome == "failed" and status.stage == "parked"


def test_a_create_that_died_half_way_is_discarded_and_its_id_is_free(local_steps, monkeypatch):
    state = new_job("wd-creating")
    state.progress.write(stage="creating")
    state.r.zadd(CREATING_JOBS, {state.id: time.time() - 3600})
    assert watchdog_round()["acted"][state.id] == "discarded"
    assert not state.exists() and not state.r.sismember(ACTIVE_JOBS, state.id)
    assert state.r.zscore(CREATING_JOBS, state.id) is None


def quiet(job: Job, for_s: float = 3600) -> None:
    """No progress for ``for_s``: the status was last written then."""
    job.r.hset(job.keys.status, "updated_at", time.time() - for_s)


def sweep() -> dict:
    """A watchdog round whose stall sweep is due (the last one's pause is over)."""
    Job("x").r.delete(STALL_SWEEP)
    return watchdog_round()


def test_a_stalled_job_is_resumed_once_per_sweep(local_steps, celery_app):
    job = new_job("wd-stalled")
    purge_queues(celery_app)  # its enhancements were lost: nothing runs, nothing waits
    quiet(job)
    sent_before = len(job.ledger.task_ids())
    report = sweep()
    assert report["acted"][job.id] == "resumed: enhance clip_001_start, enhance clip_001_end"
    assert sorted(task.args[1] for task in queued_tasks(job.id)) == ["clip_001_end", "clip_001_start"]
    assert len(job.ledger.task_ids()) == sent_before + 2
    assert job.progress.read().redrives == 1
    quiet(job)
    purge_queues(celery_app)
    assert job.id not in watchdog_round()["acted"]  # the next sweep is not due yet
    assert queued_tasks(job.id) == []


def test_each_watchdog_judges_the_last_sweep_by_its_own_period(local_steps):
    Job("x").r.delete(STALL_SWEEP)
    assert stall_sweep_due(3600) and not stall_sweep_due(3600)  # one caller per period
    time.sleep(0.05)
    assert stall_sweep_due(0.01)  # a fleet with a shorter period does not wait for the longer one
    assert not stall_sweep_due(3600)


def test_a_busy_or_recent_job_is_left_alone(local_steps, celery_app):
    """Quiet, but its steps wait in the broker; quiet, its messages gone, but a step of it holds a
    lease; its messages gone, but quiet for less than FRAMEFLEET_STALL_AFTER_S: none is stalled."""
    running, recent = new_job("wd-quiet-running"), new_job("wd-quiet-recent")
    purge_queues(celery_app)
    waiting = new_job("wd-quiet-queued")
    running.r.set(running.keys.lease("enhance:clip_001_start"), "alive", px=60_000)
    running.r.zadd(LEASES, {running.keys.lease("enhance:clip_001_start"): int(time.time() * 1000) + 60_000})
    for job in (waiting, running):
        quiet(job)
    quiet(recent, get_settings().stall_after_s - 60)
    jobs = (waiting, running, recent)
    statuses = {job.id: job.r.hgetall(job.keys.status) for job in jobs}
    messages = {job.id: queued_tasks(job.id) for job in jobs}
    try:
        report = sweep()
    finally:
        running.r.delete(running.keys.lease("enhance:clip_001_start"))
        running.r.zrem(LEASES, running.keys.lease("enhance:clip_001_start"))
    for job in jobs:
        assert job.id not in report["acted"]
        assert job.r.hgetall(job.keys.status) == statuses[job.id]  # nothing written
        assert queued_tasks(job.id) == messages[job.id]  # nothing sent


def test_a_job_that_stalls_again_and_again_at_the_same_point_is_parked(local_steps, celery_app):
    job = new_job("wd-stalls")
    purge_queues(celery_app)
    quiet(job)
    limit = get_settings().max_redrives
    job.r.hset(job.keys.redrives, "stalled:0/0", limit)  # resumed that often already
    assert sweep()["acted"][job.id] == "parked"
    assert job.r.hget(PARKED_JOBS, job.id) == f"stalled again at queued after {limit} resumes"
    assert queued_tasks(job.id) == []


def test_a_cancelled_job_whose_finalize_was_lost_is_finalized(local_steps, celery_app):
    job = new_job("wd-cancelled")
    job.cancel(0)
    purge_queues(celery_app)  # the cancel's finalize was lost
    quiet(job)
    assert sweep()["acted"][job.id] == "resumed: finalize of the cancelled revision"
    assert [(task.name, task.args) for task in queued_tasks(job.id)] == [(FINALIZE_JOB, [job.id, 0])]


def test_a_sweep_that_cannot_read_the_broker_leaves_the_rest_of_the_round_alone(local_steps, celery_app,
                                                                                monkeypatch):
    stalled, dead = new_job("wd-sweep-broken"), new_job("wd-sweep-dead")
    purge_queues(celery_app)
    quiet(stalled)
    dead.r.zadd(LEASES, {dead.keys.lease("enhance:clip_001_start"): 0})

    def broker_down():
        raise kombu.exceptions.OperationalError("the broker went away")

    monkeypatch.setattr(recovery, "broker_tasks", broker_down)
    report = sweep()
    assert report["acted"][dead.id] == "re-drove enhance:clip_001_start"
    assert report["errors"]["stall sweep"] == "the broker went away" and stalled.id not in report["acted"]
    assert stall_sweep_due(3600)  # the failed sweep gave its turn back: the next round sweeps
    assert stalled.id not in report["parked"] and stalled.progress.read().redrives == 0
