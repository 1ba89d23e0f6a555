"""Real Flower against the real Redis and workers: a job's tasks read back through its HTTP API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from framefleet.tasks.artifacts.store import open_store
from framefleet.workers.local_redis import free_port

from tests.helpers import run_job, storyboard_request, unique_id
from tests.processes import leftover_processes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flower(broker_url, start_fleet, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts-flower")
    port = free_port()
    owner = uuid.uuid4().hex  # marks Flower and anything it starts
    env = {**os.environ, "FRAMEFLEET_BROKER_URL": broker_url, "FRAMEFLEET_FLOWER_BASIC_AUTH": "ops:pa55word",
           "TEST_FLOWER_OWNER": owner}
    log = open(tmp_path_factory.mktemp("flower") / "flower.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "framefleet.workers.cli", "flower", "--port", str(port),
                                "--address", "127.0.0.1"], env=env, stdout=log, stderr=subprocess.STDOUT)
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
    yield url, open_store(f"file://{root}"), port
    process.terminate()
    process.wait(timeout=10)
    # `framefleet flower` became Flower: stopping it leaves no Flower behind.
    assert leftover_processes(owner, name="TEST_FLOWER_OWNER") == {}


def test_a_jobs_tasks_are_readable_in_flower(celery_app, flower):
    url, store, _ = flower
    job_id = unique_id("flower")
    run_job(celery_app, "storyboard", storyboard_request(job_id, 1), store)
    auth = ("ops", "pa55word")
    deadline = time.monotonic() + 30
    while True:
        tasks = httpx.get(f"{url}/api/tasks", params={"limit": 1000}, auth=auth, timeout=5).json()
        mine = [t for t in tasks.values() if job_id in (t.get("args") or "")]
        names = {t["name"] for t in mine}
        if {"framefleet.storyboard.create", "framefleet.prompts.enhance", "framefleet.images.generate_variation",
                "framefleet.scoring.score_variations", "framefleet.frames.select"} <= names:
            break
        assert time.monotonic() < deadline, names
        time.sleep(0.5)
    generation = next(t for t in mine if t["name"] == "framefleet.images.generate_variation")
    assert "clip_001_start" in generation["args"] or "clip_001_end" in generation["args"]
    # A chord body's row names its job and frame, not the results of the step before it.
    for name in ("framefleet.scoring.score_variations", "framefleet.frames.select"):
        row = next(t for t in mine if t["name"] == name)
        assert row["args"].startswith(f"({job_id!r}, 'clip_001_") and "'key'" not in row["args"]
    create = next(t for t in mine if t["name"] == "framefleet.storyboard.create")
    assert "harbour" not in create["args"] and "1 clips" in create["args"]  # the job, never its prompts
    assert all(t["state"] == "SUCCESS" for t in mine if t["name"] == "framefleet.images.generate_variation")
    assert httpx.get(f"{url}/api/tasks", timeout=5).status_code == 401  # basic auth required
    assert httpx.get(f"{url}/metrics", timeout=5).status_code == 200  # outside auth: keep it inside the network


def test_flower_refuses_to_start_without_credentials(broker_url, no_process_outlives_the_test):
    env = {k: v for k, v in os.environ.items() if k != "FRAMEFLEET_FLOWER_BASIC_AUTH"}
    env["FRAMEFLEET_BROKER_URL"] = broker_url
    result = subprocess.run([sys.executable, "-m", "framefleet.workers.cli", "flower"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "flower_basic_auth" in result.stderr and "Traceback" not in result.stderr


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port`` (/proc/net/tcp and tcp6)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, raw))
    return found


def test_flower_listens_only_on_the_address_it_is_given(flower):
    url, _, port = flower
    assert listening_addresses(port) == {"127.0.0.1"}
    assert httpx.get(f"{url}/healthcheck", timeout=5).status_code == 200
    with pytest.raises(httpx.ConnectError):  # another loopback address of this machine: nothing listens there
        httpx.get(f"http://127.0.0.2:{port}/healthcheck", timeout=5)


def test_local_only_flower_refuses_an_address_other_machines_reach(broker_url, no_process_outlives_the_test):
    env = {k: v for k, v in os.environ.items() if k != "FRAMEFLEET_FLOWER_BASIC_AUTH"}
    env["FRAMEFLEET_BROKER_URL"] = broker_url
    result = subprocess.run([sys.executable, "-m", "framefleet.workers.cli", "flower", "--local-only",
                             "--address", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--local-only" in result.stderr and "0.0.0.0" in result.stderr
    assert "Traceback" not in result.stderr
