"""Reliability on a real fleet: hostile numbers, malformed create calls, half-made creates, late
traces after a cancel, and recovery from a killed worker at the default lease settings."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.job.keys import ACTIVE_JOBS
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.requests import RequestError
from framefleet.workers.client import _send_and_wait, cancel_job, job_status, submit_job, wait_for_job

from tests.helpers import png_bytes, storyboard_request, unique_id

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, start_fleet):
    root = tmp_path_factory.mktemp("artifacts-reliability")
    fleet = start_fleet({"FRAMEFLEET_STORE_URL": f"file://{root}", "FRAMEFLEET_OFFLINE_LLM_LATENCY_S": "0.15",
                         "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": "0.2"})
    return fleet, open_store(f"file://{root}")


@pytest.mark.parametrize("overrides, field", [
    ({"convergence_epsilon": math.inf}, "overrides.convergence_epsilon"),
    ({"score_weights": {"pickscore": math.nan}}, "overrides.score_weights.pickscore"),
    ({"quality_threshold": -math.inf}, "overrides.quality_threshold"),
])
def test_non_finite_numbers_are_refused_naming_the_field(celery_app, fleet, overrides, field):
    request = storyboard_request(unique_id("nan"), 1, overrides=overrides)
    with pytest.raises(RequestError, match=f"{field}: Input should be a finite number"):
        submit_job(celery_app, "storyboard", request)
    text = json.dumps(request)  # JSON text with Infinity/NaN, as another language's client may send
    with pytest.raises(RequestError, match=field):
        submit_job(celery_app, "storyboard", text)
    assert not Job(request["job_id"]).exists()


@pytest.mark.parametrize("args", [[], [{"clips": []}, {"clips": []}]])
def test_create_with_the_wrong_number_of_arguments_names_the_request(celery_app, fleet, args):
    task_id = celery_app.send_task("framefleet.storyboard.create", args=args).id
    deadline = time.monotonic() + 30
    while (meta := celery_app.backend.get_task_meta(task_id))["status"] not in ("SUCCESS", "FAILURE"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    error = celery_app.backend.exception_to_python(meta["result"])
    assert isinstance(error, RequestError) and str(error).startswith("request: ")
    assert f"got {len(args)}" in str(error)


def test_a_create_whose_store_write_fails_leaves_nothing_and_frees_the_id(celery_app, fleet):
    _, store = fleet
    job_id = unique_id("zombie")
    store.put(f"uploads/{job_id}/ref.png", png_bytes())
    blocker = Path(store.location(f"jobs/{job_id}"))  # a file where the job's folder must go: puts fail
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.touch()
    request = storyboard_request(job_id, 1, reference_image=f"uploads/{job_id}/ref.png")
    with pytest.raises(Exception):  # the store's own error reaches the caller
        submit_job(celery_app, "storyboard", request)
    state = Job(job_id)
    assert not state.exists() and not state.r.sismember(ACTIVE_JOBS, job_id)
    blocker.unlink()
    assert submit_job(celery_app, "storyboard", request) == job_id  # the id was given back
    assert wait_for_job(job_id, timeout_s=120).outcome == "succeeded"


def test_a_cancel_during_enhancement_leaves_no_trace_files_behind(celery_app, fleet):
    _, store = fleet
    job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("cancel-enh"), 3,
                                                                      overrides={"keep_traces": False}))
    deadline = time.monotonic() + 30
    while not store.list(f"traces/{job_id}"):  # a frame's enhancement has written its traces
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert cancel_job(celery_app, job_id)["cancelled"]
    assert wait_for_job(job_id, timeout_s=60).outcome == "cancelled"
    time.sleep(2.0)  # rounds in flight at the cancel have finished by now
    assert store.list(f"traces/{job_id}") == []


def test_resume_of_a_running_job_repeats_nothing(celery_app, fleet):
    job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("resume-running"), 2))
    state = Job(job_id)
    deadline = time.monotonic() + 60
    while state.frames.get("clip_001_start").timings.enqueued is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    answer = _send_and_wait(celery_app, "framefleet.jobs.resume", job_id)["resumed_at"]
    assert answer == "running"  # the frame's steps hold live leases: nothing re-sent
    assert wait_for_job(job_id, timeout_s=120).outcome == "succeeded"
    ledger = [c["ledger_key"] for c in state.ledger.offline_calls()]
    assert len(ledger) == len(set(ledger)) == 16
    assert json.loads(fleet[1].get(f"jobs/{job_id}/manifest.json"))["cost"]["total"]["images_stored"] == 16
    assert job_status(job_id).redrives == 0
