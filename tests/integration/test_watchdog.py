"""The watchdog on the real test Redis: one broken job never stops it; it re-drives exactly the
steps whose lease expired; a step that keeps dying parks its job; a half-made create is discarded."""

from __future__ import annotations

import time

import pytest

from framefleet.tasks.job.leases import lease_key, redrives_key, running_key
from framefleet.tasks.coordination.recovery import watchdog_round
from framefleet.tasks.job.state import ACTIVE_JOBS, PARKED_JOBS, JobState, active_jobs
from tests.helpers import storyboard_request, unique_id

pytestmark = pytest.mark.integration


def new_job(prefix: str) -> JobState:
    from framefleet.tasks import entry

    return JobState(entry.submit_job("storyboard", storyboard_request(unique_id(prefix), 1))["job_id"])


def test_a_broken_job_is_parked_and_the_jobs_after_it_are_still_redriven(local_steps):
    broken, dead, healthy = new_job("wd-a-broken"), new_job("wd-b-dead"), new_job("wd-c-healthy")
    broken.r.hset(f"framefleet:job:{broken.job_id}:status", "percent", "NaN-and-then-some")  # unreadable
    dead.r.hset(running_key(dead.job_id), "enhance:clip_001_start", 0)  # started, and its lease is gone
    healthy.r.hset(running_key(healthy.job_id), "enhance:clip_001_start", 0)
    healthy.r.set(lease_key(healthy.job_id, "enhance:clip_001_start"), "alive", px=60_000)
    tasks_before = len(dead.task_ids())

    report = watchdog_round()

    assert broken.job_id in report["parked"] and broken.job_id in broken.r.hgetall(PARKED_JOBS)
    assert broken.job_id not in active_jobs()
    assert report["acted"][dead.job_id] == "re-drove enhance:clip_001_start"
    assert dead.status().redrives == 1 and len(dead.task_ids()) == tasks_before + 1  # one enhance re-sent
    assert healthy.job_id not in report["acted"] and healthy.status().redrives == 0  # live lease: left alone
    assert watchdog_round()["acted"].get(broken.job_id) is None  # parked jobs are not retried forever


def test_a_step_that_keeps_dying_parks_its_job(local_steps, monkeypatch):
    state = new_job("wd-dies")
    step = "generate:clip_001_start/0/enhanced/1"
    state.r.hset(running_key(state.job_id), step, 1)
    state.r.hset(redrives_key(state.job_id), step, 3)  # re-driven 3 times already, and dead again
    watchdog_round()
    assert "died 4 times" in state.r.hget(PARKED_JOBS, state.job_id)
    status = state.status()
    assert status.state == "done" and status.outcome == "failed" and status.stage == "parked"


def test_a_create_that_died_half_way_is_discarded_and_its_id_is_free(local_steps, monkeypatch):
    state = new_job("wd-creating")
    state.update_status(stage="creating")
    state.r.hset(f"framefleet:job:{state.job_id}:status", "updated_at", time.time() - 3600)
    assert watchdog_round()["acted"][state.job_id] == "discarded"
    assert not state.exists() and not state.r.sismember(ACTIVE_JOBS, state.job_id)
