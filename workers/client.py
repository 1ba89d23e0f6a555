"""What a main app needs: submit a job by task name, read its progress.

A main app that cannot import framefleet does the same with its own Celery app:
``send_task("framefleet.storyboard.create", args=[request_json])`` returns the job id, and the
progress record is the Redis hash ``framefleet:job:{job_id}:status`` (or the task
``framefleet.jobs.status``). See README, "Enqueueing a job from a main app".
"""

from __future__ import annotations

import time

from celery import Celery

from tasks.records import JobStatus
from tasks.state import JobState

CREATE_TASKS = {"storyboard": "framefleet.storyboard.create", "references": "framefleet.references.create"}


def submit_job(app: Celery, kind: str, request: dict | str, timeout_s: float = 30.0) -> str:
    """Enqueue a job by task name; returns its id once the control queue has accepted it.

    A request the fleet refuses raises the task's error, whose message names the field.
    """
    # Poll the stored result rather than ``AsyncResult.get()``: get() subscribes to the task's
    # children too and leaves them pending in this process long after the job id is known.
    return _send_and_wait(app, CREATE_TASKS[kind], request, timeout_s)["job_id"]


def _send_and_wait(app: Celery, task: str, argument, timeout_s: float) -> dict:
    task_id = app.send_task(task, args=[argument]).id
    deadline = time.monotonic() + timeout_s
    while True:
        meta = app.backend.get_task_meta(task_id)
        if meta["status"] == "SUCCESS":
            return meta["result"]
        if meta["status"] == "FAILURE":
            raise app.backend.exception_to_python(meta["result"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"no control worker answered {task} within {timeout_s}s")
        time.sleep(0.05)


def resume_job(app: Celery, job_id: str, timeout_s: float = 30.0) -> dict:
    """Continue a job from its stored state (e.g. after every worker died and the broker was wiped)."""
    return _send_and_wait(app, "framefleet.jobs.resume", job_id, timeout_s)


def cancel_job(app: Celery, job_id: str, timeout_s: float = 30.0) -> dict:
    """Cancel a job: queued tasks revoked, paid predictions cancelled, manifest marked cancelled."""
    return _send_and_wait(app, "framefleet.jobs.cancel", job_id, timeout_s)


def job_status(job_id: str) -> JobStatus:
    return JobState(job_id).status()


def wait_for_job(job_id: str, timeout_s: float = 600.0, poll_s: float = 0.2) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = job_status(job_id)
        if status.state == "done":
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not done after {timeout_s}s: {status.stage} {status.percent}%")
        time.sleep(poll_s)
