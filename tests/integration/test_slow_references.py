"""A slow or hostile reference never delays other jobs: creates run on the intake queue and a
reference fetch has one total deadline (its own fleet: the intake settings differ per module)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.requests import RequestError
from framefleet.workers.client import submit_job, wait_for_job

from tests.fakes.http import LocalServer
from tests.helpers import storyboard_request, unique_id

pytestmark = pytest.mark.integration


class DripHost:
    """Every request gets its headers, then one byte every 0.2 s of a 10 kB body, until stopped."""

    def __init__(self):
        self.stop = threading.Event()
        self.server = LocalServer(self)

    def handle(self, handler, method):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", "10000")
        handler.end_headers()
        try:
            while not self.stop.wait(0.2):
                handler.wfile.write(b"x")
                handler.wfile.flush()
        except OSError:  # the client gave up
            pass


def test_slow_references_never_delay_other_jobs(celery_app, start_fleet, tmp_path):
    """Four creates whose reference drips one byte every 0.2 s hold intake threads up to the fetch
    deadline; another job is created, runs and finishes meanwhile, and the slow ones then fail
    naming the field."""
    host = DripHost()
    with host.server:
        store = open_store(f"file://{tmp_path / 'artifacts'}")
        start_fleet({"FRAMEFLEET_STORE_URL": store.url, "FRAMEFLEET_REFERENCE_URL_DEADLINE_S": "6",
                     "FRAMEFLEET_REFERENCE_URL_ALLOWED_HOSTS": '["127.0.0.1"]'})
        slow_requests = [storyboard_request(unique_id(f"drip{n}"), 1,
                                            reference_image=f"{host.server.url}/drip.png?{n}") for n in range(4)]
        failures: list[tuple[float, str]] = []

        def submit_slow(request: dict) -> None:
            try:
                submit_job(celery_app, "storyboard", request)
            except RequestError as error:
                failures.append((time.time(), str(error)))

        with ThreadPoolExecutor(4) as pool:
            for request in slow_requests:
                pool.submit(submit_slow, request)
            time.sleep(0.5)  # the slow creates hold their intake threads now
            job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("beside-drip"), 1))
            status = wait_for_job(job_id, timeout_s=120)
            finished = time.time()
        host.stop.set()
    assert status.outcome == "succeeded"
    assert len(failures) == 4 and all("reference_image: " in why and "deadline" in why for _, why in failures)
    assert finished < min(when for when, _ in failures)  # the other job was done before the slow ones gave up
    assert not any(Job(r["job_id"]).exists() for r in slow_requests)  # refused: nothing written
