"""The watchdog on the real test Redis: one broken job never stops it; it re-drives exactly the
steps whose lease expired; a step that keeps dying parks its job; a half-made create is discarded."""

from __future__ import annotations

import time

import pytest
from framefleet.tasks.coordination.recovery import watchdog_round
from framefleet.tasks.job.jobs import active_jobs
from framefleet.tasks.job.keys import ACTIVE_JOBS, CREATING_JOBS, LEASES, PARKED_JOBS
from framefleet.tasks.job.model import Job

from tests.helpers import create_here, storyboard_request, unique_id

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
