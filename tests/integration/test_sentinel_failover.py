"""The fleet on Redis Sentinel: the master dies mid-job, the sentinels promote its replica, and every
Redis client of the fleet (broker, results, job state, the exporter, the CLI) follows the new master;
the job completes with the same worker processes (docs/failover.md)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from celery import Celery
from framefleet.config.celery import QUEUES, celery_config
from framefleet.config.settings import get_settings
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.job.redis import state_client
from framefleet.workers.app import configure
from framefleet.workers.client import check_connection, job_status, submit_job, wait_for_job
from framefleet.workers.local_redis import free_port

from tests.helpers import storyboard_request, unique_id, wait_until
from tests.integration.test_cli_errors import assert_one_line_error, run_cli
from tests.integration.test_fault_tolerance import FAST, assert_no_image_paid_twice
from tests.integration.test_metrics import Exporter, value
from tests.sentinel_group import MASTER_NAME, SentinelGroup

pytestmark = pytest.mark.integration


@pytest.fixture
def sentinels(tmp_path, broker_url, monkeypatch):
    """A master, a replica and three sentinels; this process (client side) points at them."""
    with SentinelGroup(tmp_path / "redis") as group:
        monkeypatch.setenv("FRAMEFLEET_BROKER_URL", group.url)
        monkeypatch.setenv("FRAMEFLEET_REDIS_SENTINEL_MASTER", MASTER_NAME)
        get_settings.cache_clear()
        configure()  # the fleet launcher pings its workers through this process's app
        yield group
        monkeypatch.undo()
        get_settings.cache_clear()
        configure()


@pytest.fixture
def client_app(sentinels):
    """A main app's side on the sentinels: its own Celery app, configured as the fleet's."""
    app = Celery("failover-client", set_as_current=False)
    app.conf.update(celery_config(get_settings()))
    yield app
    app.close()


def test_a_job_completes_through_a_sentinel_failover(sentinels, client_app, fleet_for_test, tmp_path):
    store = open_store(f"file://{tmp_path / 'artifacts'}")
    fleet = fleet_for_test({"FRAMEFLEET_BROKER_URL": sentinels.url, "FRAMEFLEET_REDIS_SENTINEL_MASTER": MASTER_NAME,
                            "FRAMEFLEET_STORE_URL": store.url, **FAST, "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": "0.5"})
    started_pids = {name: process.pid for name, process in fleet.processes.items()}
    assert sorted(started_pids) == sorted(QUEUES)
    check_connection()  # the CLI's check asks the sentinels for the master, then pings it
    exporter = Exporter(sentinels.url)  # FRAMEFLEET_REDIS_SENTINEL_MASTER from this process's environment
    try:
        job_id = submit_job(client_app, "storyboard", storyboard_request(unique_id("failover"), 3))
        wait_until(lambda: job_status(job_id).frames_done >= 1)
        assert value(exporter.scrape(), "framefleet_redis_up") == 1
        status, done_s, promoted_s = fail_over_during(job_id, sentinels)
        # The exporter's next scrapes reach the new master, where the job finished.
        wait_until(lambda: value(scraped := exporter.scrape(), "framefleet_redis_up") == 1 and value(
            scraped, "framefleet_jobs_finished_total", status="succeeded") == 1, timeout_s=30)
    finally:
        exporter.stop()
    print(f"\nsentinel failover: replica promoted {promoted_s:.1f}s after kill -9 of the master; "
          f"job done {done_s:.1f}s after it ({status.redrives} re-drives)")

    manifest = json.loads(store.get(f"jobs/{job_id}/manifest.json"))
    assert status.outcome == "succeeded"
    assert len(manifest["frames"]) == 6 and all(f["selected"] for f in manifest["frames"])
    assert_no_image_paid_twice(job_id, manifest)
    assert fleet.restarts == []  # no worker exited: each rode out the failover as the same process
    assert {name: process.pid for name, process in fleet.processes.items() if process.poll() is None} == started_pids
    # The CLI finds the new master too.
    shown = run_cli("status", job_id, "--json",
                    env={"FRAMEFLEET_BROKER_URL": sentinels.url, "FRAMEFLEET_REDIS_SENTINEL_MASTER": MASTER_NAME})
    assert shown.returncode == 0 and json.loads(shown.stdout)["outcome"] == "succeeded", shown.stderr


def test_a_call_that_meets_the_failover_completes_on_the_promoted_replica(sentinels):
    """A call in flight when the master dies is retried through the sentinels, not at the dead
    master's address: its retries reach the promoted replica."""
    client = state_client()
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(client.brpop, ["handed-over"], 60)
        master = redis.Redis(port=sentinels.master.port)
        wait_until(lambda: master.info("clients")["blocked_clients"] == 1)
        sentinels.kill_master()
        sentinels.wait_for_promotion()
        client.lpush("handed-over", "after the promotion")
        assert waiting.result(timeout=60) == ("handed-over", "after the promotion")


def fail_over_during(job_id: str, sentinels: SentinelGroup):
    """kill -9 of the master; the job's status, and seconds from the kill to its end and to the promotion."""
    killed_at = time.monotonic()
    sentinels.kill_master()
    sentinels.wait_for_promotion()
    promoted_s = time.monotonic() - killed_at
    # At worst a message a worker held, unstarted, when its connection broke comes back through
    # kombu's restore of unacknowledged messages: 5 s here plus up to ~100 s (docs/failover.md).
    status = wait_for_job(job_id, timeout_s=180)
    return status, time.monotonic() - killed_at, promoted_s


def test_the_cli_names_a_sentinel_mistake_in_one_line(no_process_outlives_the_test):
    nowhere = f"sentinel://:s3cret@127.0.0.1:{free_port()}/0;sentinel://127.0.0.1:{free_port()}"
    assert_one_line_error(run_cli("status", "job-1", env={"FRAMEFLEET_BROKER_URL": nowhere}),
                          "FRAMEFLEET_REDIS_SENTINEL_MASTER", "FRAMEFLEET_BROKER_URL names Redis Sentinel")
    line = assert_one_line_error(
        run_cli("status", "job-1", env={"FRAMEFLEET_BROKER_URL": nowhere, "FRAMEFLEET_REDIS_SENTINEL_MASTER": "ff"},
                timeout_s=15),
        "cannot reach the broker at sentinel://:**@127.0.0.1:", "No master found for 'ff'")
    assert "s3cret" not in line
