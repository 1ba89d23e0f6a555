"""A main app with Celery's default settings, on the oldest client the fleet supports, shares the
broker with the fleet: it submits a job and reads its result, and its own worker keeps consuming
completion callbacks while the fleet, the main app and a Flower-style monitor broadcast.

The main app (tests/mainapp/) runs in processes of its own, with `.venv-mainapp`'s interpreter
(`make test` builds it; MAINAPP_PYTHON names another one to try another client version), and does
not import framefleet.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest
import redis
from framefleet.config.celery import broker_lists
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.coordination.dispatch import CONTINUATION, NEW_JOB
from framefleet.workers.client import wait_for_job

from tests.helpers import storyboard_request, unique_id, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OLDEST_CLIENT = {"celery": "5.4.0", "kombu": "5.4.2"}  # docs/main-app-clients.md
RECEIVED = "mainapp:callbacks"  # tests/mainapp/app.py
CALLBACK_QUEUE = "mainapp"
# What Flower asks every worker each time it refreshes its worker view.
FLOWER_INSPECTS = ("stats", "active_queues", "registered", "scheduled", "active", "reserved", "revoked", "conf")
CONTROL_ERROR = "Control command error"


@pytest.fixture(scope="module")
def mainapp_python() -> str:
    python = os.environ.get("MAINAPP_PYTHON") or str(ROOT / ".venv-mainapp" / "bin" / "python")
    if not Path(python).exists():
        pytest.fail(f"no main-app client at {python}: run `make .venv-mainapp/.installed` (or `make test`)",
                    pytrace=False)
    return python


@pytest.fixture(scope="module")
def mainapp_env(broker_url) -> dict[str, str]:
    # The main app's own environment: none of this process's Python paths.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "MAINAPP_BROKER_URL": broker_url}


@pytest.fixture(scope="module")
def mainapp(mainapp_python, mainapp_env):
    def run(*args: str):
        result = subprocess.run([mainapp_python, "-m", "tests.mainapp.client", *args], cwd=ROOT, env=mainapp_env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)

    return run


@pytest.fixture(scope="module")
def fleet(start_fleet, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts-main-app-clients")
    fleet = start_fleet({"FRAMEFLEET_STORE_URL": f"file://{root}"})
    return fleet, open_store(f"file://{root}")


@pytest.fixture
def mainapp_worker(mainapp_python, mainapp_env, fleet, tmp_path):
    """The main app's own worker on its callback queue, with Celery's defaults otherwise (mingle
    and gossip on: at start it broadcasts to every worker on the broker, the fleet's included)."""
    name = f"mainapp-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    log = tmp_path / "mainapp-worker.log"
    with open(log, "wb") as output:
        worker = subprocess.Popen([mainapp_python, "-m", "celery", "-A", "tests.mainapp.app", "worker",
                                   "-Q", CALLBACK_QUEUE, "-P", "solo", "-n", name, "-l", "INFO"],
                                  cwd=ROOT, env=mainapp_env, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        yield MainAppWorker(name, log, worker)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


class MainAppWorker(NamedTuple):
    name: str
    log: Path
    process: subprocess.Popen


def wait_for_answers(broadcast, nodes: list[str], worker: MainAppWorker, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while missing := set(nodes) - set(broadcast() or {}):
        assert worker.process.poll() is None, f"the main app's worker exited: {worker.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no answer from {sorted(missing)}"


def received(job_id: str) -> list[dict]:
    client = redis.Redis.from_url(os.environ["FRAMEFLEET_BROKER_URL"])
    return [done for done in map(json.loads, client.lrange(RECEIVED, 0, -1)) if done["job_id"] == job_id]


def test_the_oldest_client_is_the_one_claimed_and_does_not_import_framefleet(mainapp):
    versions = mainapp("versions")
    assert versions["framefleet"] is False
    if "MAINAPP_PYTHON" not in os.environ:
        assert {name: versions[name] for name in OLDEST_CLIENT} == OLDEST_CLIENT, versions


def test_a_default_main_app_submits_reads_results_and_consumes_callbacks_across_broadcasts(
        celery_app, fleet, mainapp, mainapp_worker):
    fleet, store = fleet
    worker_name = mainapp_worker.name
    fleet_nodes = [fleet.node_name(queue) for queue in fleet.queues]
    everyone = [*fleet_nodes, worker_name]

    # The fleet's side broadcasts (a ping, then what Flower asks): every worker answers, the main
    # app's included, so each side reads the reply bindings the other wrote.
    wait_for_answers(lambda: celery_app.control.inspect(destination=everyone, timeout=1).ping(), everyone,
                     mainapp_worker)
    for method in FLOWER_INSPECTS:
        replies = getattr(celery_app.control.inspect(destination=everyone, timeout=30, limit=len(everyone)), method)()
        assert set(replies or {}) == set(everyone), method
    # The main app's side broadcasts: the fleet's workers answer it.
    assert set(everyone) <= set(mainapp("ping", str(len(everyone)))), "a worker did not answer the main app"

    # Submitted by the main app, its result read through the result backend; the callback comes
    # back to the main app's worker, which still consumes after every broadcast above.
    request = storyboard_request(unique_id("client"), 1, overrides={"num_variations": 2},
                                 callback={"task": "mainapp.storyboard_done", "queue": CALLBACK_QUEUE})
    answer = mainapp("submit", json.dumps(request))
    assert answer["job_id"] == request["job_id"]
    assert wait_for_job(request["job_id"], timeout_s=120).outcome == "succeeded"
    wait_until(lambda: received(request["job_id"]), timeout_s=60)
    [done] = received(request["job_id"])
    assert done["status"] == "succeeded" and done["manifest_key"] == f"jobs/{request['job_id']}/manifest.json"
    assert store.get(done["manifest_key"])

    # And it still answers afterwards.
    assert set(celery_app.control.inspect(destination=[worker_name], timeout=30, limit=1).ping() or {}) == {worker_name}
    logs = {path.name: path.read_text(errors="replace") for path in fleet.log_dir.glob("*.log")}
    logs["main app worker"] = mainapp_worker.log.read_text(errors="replace")
    assert len(logs) == len(fleet.queues) + 1
    assert {name: log for name, log in logs.items() if CONTROL_ERROR in log} == {}
    assert fleet.restarts == []


@pytest.mark.parametrize("priority", [NEW_JOB, CONTINUATION])
def test_both_sides_put_a_priority_in_the_list_the_fleet_counts(celery_app, broker_url, mainapp, priority):
    """The lists that resume, admission and KEDA count (broker_lists) are those a default client
    writes to: a message at the new-job priority goes to the last one, the continuation's to the
    first, served first."""
    queue = unique_id("probe")
    expected = broker_lists(queue)[-1 if priority == NEW_JOB else 0]
    client = redis.Redis.from_url(broker_url)
    mainapp("probe", queue, str(priority))
    celery_app.send_task("mainapp.probe", queue=queue, priority=priority)
    holding = {name.decode() for name in client.scan_iter(match=f"{queue}*")}
    assert holding == {expected} and client.llen(expected) == 2
    client.delete(expected)
