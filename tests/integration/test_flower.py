"""Real Flower against the real Redis and workers: a job's tasks read back through its HTTP API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.helpers import run_job, storyboard_request, unique_id
from tests.processes import leftover_processes
from framefleet.workers.local_redis import free_port
from framefleet.tasks.store import open_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flower(broker_url, start_fleet, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts-flower")
    port = free_port()
    owner = uuid.uuid4().hex  # marks Flower and anything it starts
    env = {**os.environ, "FRAMEFLEET_BROKER_URL": broker_url, "FRAMEFLEET_FLOWER_BASIC_AUTH": "ops:pa55word",
           "TEST_FLOWER_OWNER": owner}
    log = open(tmp_path_factory.mktemp("flower") / "flower.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "framefleet.workers.cli", "flower", "--port", str(port)], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "flower did not start"
        time.sleep(0.2)
    start_fleet({"FRAMEFLEET_STORE_URL": f"file://{root}"})
    yield url, open_store(f"file://{root}")
    process.terminate()
    process.wait(timeout=10)
    # `framefleet flower` became Flower: stopping it leaves no Flower behind.
    assert leftover_processes(owner, name="TEST_FLOWER_OWNER") == {}


def test_a_jobs_tasks_are_readable_in_flower(celery_app, flower):
    url, store = flower
    job_id = unique_id("flower")
    run_job(celery_app, "storyboard", storyboard_request(job_id, 1), store)
    auth = ("ops", "pa55word")
    deadline = time.monotonic() + 30
    while True:
        tasks = httpx.get(f"{url}/api/tasks", params={"limit": 1000}, auth=auth, timeout=5).json()
        mine = [t for t in tasks.values() if job_id in (t.get("args") or "")]
        names = {t["name"] for t in mine}
        if {"framefleet.prompts.enhance", "framefleet.images.generate_variation",
                "framefleet.scoring.score_variations", "framefleet.frames.select"} <= names:
            break
        assert time.monotonic() < deadline, names
        time.sleep(0.5)
    generation = next(t for t in mine if t["name"] == "framefleet.images.generate_variation")
    assert "clip_001_start" in generation["args"] or "clip_001_end" in generation["args"]
    assert all(t["state"] == "SUCCESS" for t in mine if t["name"] == "framefleet.images.generate_variation")
    assert httpx.get(f"{url}/api/tasks", timeout=5).status_code == 401  # basic auth required
    assert httpx.get(f"{url}/metrics", timeout=5).status_code == 200  # outside auth: keep it inside the network


def test_flower_refuses_to_start_without_credentials(broker_url, no_process_outlives_the_test):
    env = {k: v for k, v in os.environ.items() if k != "FRAMEFLEET_FLOWER_BASIC_AUTH"}
    env["FRAMEFLEET_BROKER_URL"] = broker_url
    result = subprocess.run([sys.executable, "-m", "framefleet.workers.cli", "flower"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "flower_basic_auth" in result.stderr and "Traceback" not in result.stderr
