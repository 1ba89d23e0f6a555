"""Workers ride out broker faults on their own (tasks/runtime/celery_compat.py), and exit non-zero when they can't."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from framefleet.config.celery import QUEUES
from framefleet.tasks.artifacts.store import open_store
from framefleet.workers.client import job_status, submit_job, wait_for_job
from framefleet.workers.fleet import Fleet, worker_argv
from framefleet.workers.local_redis import LocalRedis

from tests.helpers import storyboard_request, unique_id
from tests.integration.test_fault_tolerance import FAST, assert_no_image_paid_twice, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(f"file://{tmp_path_factory.mktemp('artifacts')}")


@pytest.fixture(scope="module")
def fleet(start_fleet, store) -> Fleet:
    # FAST: a message reserved but not started when the connection dropped stays in `unacked`
    # until the visibility timeout; the job completes through that redelivery, not a restart.
    # A message a worker was taking as Redis shut down is lost (popped, the reply never sent): the
    # watchdog resumes its job after FRAMEFLEET_STALL_AFTER_S.
    return start_fleet({"FRAMEFLEET_STORE_URL": store.url, **FAST, "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": "1.0",
                        "FRAMEFLEET_STALL_AFTER_S": "5"})


@pytest.fixture(scope="module")
def started_pids(fleet) -> dict[str, int]:
    """The fleet's worker processes as started: each test checks that none exited or was replaced."""
    pids = worker_pids(fleet)
    assert sorted(pids) == sorted(QUEUES)
    return pids


def worker_pids(fleet: Fleet) -> dict[str, int]:
    return {name: process.pid for name, process in fleet.processes.items() if process.poll() is None}


def test_an_entry_that_is_not_a_kombu_message_is_discarded(celery_app, fleet, started_pids, store, redis_server):
    broker = redis.Redis.from_url(redis_server.url)
    broker.lpush("images", "not json at all", "[1, 2]")  # a JSONDecodeError, then a TypeError in kombu
    job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("bad-entry"), 1))
    assert wait_for_job(job_id, timeout_s=60).outcome == "succeeded"
    log = (fleet.log_dir / "images.log").read_text()
    assert log.count("Discarded an entry in a Redis queue that is not a kombu message") == 2
    assert "'not json at all'" in log
    assert broker.llen("images") == 0
    assert fleet.restarts == [] and worker_pids(fleet) == started_pids


def test_workers_survive_a_redis_restart_under_load(celery_app, fleet, started_pids, store, redis_server):
    job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("broker-restart"), 3))
    broker = redis.Redis.from_url(redis_server.url)
    # Restart while the images worker holds unacknowledged variations and waits in BRPOP for more
    # (4 variations, 8 threads): the state in which kombu 5.7.0 / celery 5.7.0 ended it.
    wait_until(lambda: job_status(job_id).frames_done >= 1 and broker.hlen("unacked") >= 2)
    redis_server.stop(remove_data=False)  # SIGTERM: Redis writes its append-only file and exits
    time.sleep(1.0)
    redis_server.start()
    status = wait_for_job(job_id, timeout_s=120)
    manifest = json.loads(store.get(f"jobs/{job_id}/manifest.json"))
    assert status.outcome == "succeeded"
    assert all(f["status"] == "succeeded" for f in manifest["frames"])
    assert_no_image_paid_twice(job_id, manifest)
    assert fleet.restarts == []
    assert worker_pids(fleet) == started_pids  # every worker is the process it was before


WORKER_COMMANDS = {
    "celery worker": ["-m", "celery", "-A", "framefleet.workers.app", *worker_argv(["images"], "threads", 2)],
    "framefleet worker": ["-m", "framefleet.workers.cli", "worker", "-Q", "images", "-P", "threads", "-c", "2"],
}


@pytest.mark.parametrize("command", WORKER_COMMANDS)
def test_a_worker_that_cannot_go_on_exits_non_zero(command, tmp_path):
    """Redis denies BRPOP (an ACL change): a real unrecoverable error, not a connection loss."""
    with LocalRedis() as server:
        log_path = tmp_path / "images.log"
        with open(log_path, "wb") as log:
            worker = subprocess.Popen([sys.executable, *WORKER_COMMANDS[command]],
                                      env={**os.environ, "FRAMEFLEET_BROKER_URL": server.url},
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: b"ready." in log_path.read_bytes() or worker.poll() is not None)
            redis.Redis(port=server.port).acl_setuser("default", enabled=True, nopass=True, commands=["-brpop"])
            exit_code = worker.wait(timeout=60)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    assert "Unrecoverable error" in log_path.read_text()
    assert exit_code != 0


def test_a_fleet_that_never_gets_ready_leaves_nothing_running(broker_url, no_process_outlives_the_test):
    fleet = Fleet({"FRAMEFLEET_BROKER_URL": broker_url}, queues=("control", "images"))
    with pytest.raises(RuntimeError, match="not ready"):
        fleet.start(timeout_s=0)  # one ping of half a second: the workers are still importing
    assert fleet.processes == {}  # stopped by pid, with their children (no_process_outlives_the_test)
    assert fleet._beat_dirs and not any(directory.exists() for directory in fleet._beat_dirs)  # beat schedule removed
