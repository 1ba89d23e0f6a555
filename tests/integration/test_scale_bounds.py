"""Nothing scans all jobs: a job list, a resume and a watchdog round do the same Redis work with N
and with 4N finished jobs in Redis (the same commands, the same reply bytes but for timestamps).

The finished jobs carry only what these operations could read: a place on the recent list, a done
status, and for every tenth a parked reason. They are older than every other job, so the lists'
newest rows are the same jobs at N and 4N and only what a scan would reach has grown.
"""

from __future__ import annotations

import time

import pytest
import redis
from framefleet.config.settings import get_settings
from framefleet.tasks.coordination.recovery import resume, watchdog_round
from framefleet.tasks.job.jobs import job_summaries
from framefleet.tasks.job.keys import LEASES, PARKED_JOBS, RECENT_JOBS, STALL_SWEEP, JobKeys
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.progress import flatten
from framefleet.tasks.job.records import JobStatus

from tests.bench.scale_bench import REPLY_SLACK, issued
from tests.helpers import create_here, purge_queues, storyboard_request, unique_id

pytestmark = pytest.mark.integration

FINISHED = 1000
LIST_LIMIT = 20


def finished_ids(prefix: str, first: int, count: int) -> list[str]:
    return [f"{prefix}-{n:06d}" for n in range(first, first + count)]


def seed_finished(client: redis.Redis, job_ids: list[str], first: int, oldest: float) -> None:
    status = JobStatus(job_id="", kind="storyboard", state="done", stage="done", outcome="succeeded",
                       percent=100.0, frames_total=2, frames_done=2, message="Finished: succeeded", updated_at=oldest)
    pipe = client.pipeline(transaction=False)
    for n, job_id in enumerate(job_ids, start=first):
        pipe.zadd(RECENT_JOBS, {job_id: oldest - n})
        pipe.hset(JobKeys(job_id).status, mapping=flatten({**status.model_dump(), "job_id": job_id}))
        if n % 10 == 0:
            pipe.hset(PARKED_JOBS, job_id, "step generate died 4 times")
    pipe.execute()


def redis_work(client: redis.Redis, operation) -> tuple[dict[str, int], int]:
    """The commands ``operation`` issued, by name (Lua scripts count what they call), and the bytes
    Redis sent back."""
    cost, _ = issued(client, operation)
    return cost.commands, cost.reply_bytes


@pytest.fixture
def finished_prefix(broker_url):
    prefix = unique_id("scale-done")
    yield prefix
    client = redis.Redis.from_url(broker_url)
    job_ids = finished_ids(prefix, 0, 4 * FINISHED)
    client.zrem(RECENT_JOBS, *job_ids)
    client.hdel(PARKED_JOBS, *job_ids)
    client.delete(*[JobKeys(job_id).status for job_id in job_ids])


def test_list_resume_and_watchdog_do_the_same_work_with_four_times_the_finished_jobs(
        local_steps, celery_app, broker_url, finished_prefix, monkeypatch):
    # No create of another test turns stale mid-test: each pass must find the same work.
    monkeypatch.setenv("FRAMEFLEET_CREATE_TIMEOUT_S", str(10 * 24 * 3600))
    get_settings.cache_clear()
    client = redis.Redis.from_url(broker_url)
    in_flight = [create_here("storyboard", storyboard_request(unique_id(f"scale-{n}"), 1)) for n in range(3)]
    oldest = time.time() - 3600 - client.zcard(RECENT_JOBS)
    dead = {JobKeys(job_id).lease("enhance:clip_001_start"): 0 for job_id in in_flight[1:]}
    operations = {
        "list": lambda: job_summaries(False, LIST_LIMIT),
        "list active": lambda: job_summaries(True, LIST_LIMIT),
        "resume": lambda: resume(Job(in_flight[0])),
        "watchdog": watchdog_round,
    }

    def one_pass() -> dict[str, tuple[dict[str, int], int]]:
        """Each operation from the same state: the broker emptied (resume re-sends the first
        job's enhancements), the other two jobs' enhancement leases dead (the round re-drives them)."""
        purge_queues(celery_app)
        client.zadd(LEASES, dead)
        client.delete(STALL_SWEEP)  # each round sweeps the active list for stalled jobs
        return {name: redis_work(client, operation) for name, operation in operations.items()}

    seed_finished(client, finished_ids(finished_prefix, 0, FINISHED), 0, oldest)
    one_pass()  # the first calls load scripts and start lists
    at_n = one_pass()
    seed_finished(client, finished_ids(finished_prefix, FINISHED, 3 * FINISHED), FINISHED, oldest)
    at_4n = one_pass()

    assert at_n["watchdog"][0]["lpush"] == 2 and at_n["resume"][0]["lpush"] == 2  # each did its work
    for name in operations:
        (calls_n, bytes_n), (calls_4n, bytes_4n) = at_n[name], at_4n[name]
        assert calls_4n == calls_n, name
        assert abs(bytes_4n - bytes_n) <= REPLY_SLACK, (name, bytes_n, bytes_4n)


def test_a_listed_job_says_why_it_was_parked(local_steps):
    job = Job(create_here("storyboard", storyboard_request(unique_id("scale-parked"), 1)))
    job.park("step generate died 4 times")
    row = next(row for row in job_summaries(False, 5) if row.job_id == job.id)
    assert (row.stage, row.parked) == ("parked", "step generate died 4 times")
