"""A create sent while no intake worker runs: the caller's wait ends naming the queue, the message
expires unrun, and sending the same request again later is safe (no JobExists from the first)."""

from __future__ import annotations

import pytest
from framefleet.tasks.job.model import Job
from framefleet.workers.client import NotTaken, submit_job, wait_for_job
from framefleet.workers.fleet import Fleet

from tests.conftest import FLEET_START_TIMEOUT_S, TEST_ENV, TEST_SHAPES
from tests.helpers import purge_queues, storyboard_request, unique_id

pytestmark = pytest.mark.integration


def test_a_create_nobody_takes_expires_unrun_and_can_be_sent_again(celery_app, broker_url, tmp_path):
    purge_queues(celery_app)
    env = {**TEST_ENV, "FRAMEFLEET_BROKER_URL": broker_url, "FRAMEFLEET_STORE_URL": f"file://{tmp_path}"}
    fleet = Fleet(env, queues=("control", "llm", "images", "gpu"), log_dir=tmp_path / "logs", shapes=TEST_SHAPES)
    fleet.start(FLEET_START_TIMEOUT_S)
    try:
        request = storyboard_request(unique_id("not-taken"), 1)
        with pytest.raises(NotTaken, match=r"^intake: no intake worker took framefleet\.storyboard\.create within 1s"):
            submit_job(celery_app, "storyboard", request, timeout_s=1)
        fleet.start_worker("intake")
        fleet.wait_ready([fleet.node_name("intake")], FLEET_START_TIMEOUT_S)
        # The intake worker took the expired message and dropped it: the id is still free.
        assert submit_job(celery_app, "storyboard", request) == request["job_id"]
        assert wait_for_job(request["job_id"], timeout_s=60).outcome == "succeeded"
        assert Job(request["job_id"]).progress.read().revision == 0
    finally:
        fleet.stop()
