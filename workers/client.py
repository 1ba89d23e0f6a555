"""What a main app needs: submit a job by task name, read its progress.

A main app that cannot import framefleet does the same with its own Celery app:
``send_task(CREATE_STORYBOARD, args=[request_json])`` returns the job id, and the
progress record is the Redis hash ``framefleet:job:{job_id}:status`` (or the task
``framefleet.jobs.status``). See README, "Main-app contract".
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from celery import Celery
from framefleet.config.celery import (
    CANCEL_JOB,
    CHOOSE_CANDIDATE,
    CREATE_TASKS,
    LIST_JOBS,
    REGENERATE_FRAME,
    RESUME_JOB,
    TASK_QUEUES,
    task_time_limits,
)
from framefleet.config.settings import Settings, get_settings
from framefleet.tasks.job.errors import JobNotFound
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import JobStatus
from framefleet.tasks.job.redis import connect
from framefleet.tasks.job.requests import precheck_request
from kombu.utils.url import sanitize_url
from redis.backoff import NoBackoff
from redis.retry import Retry


class FleetUnavailable(ConnectionError):
    """No broker is configured, or a Redis the fleet uses cannot be reached."""


def check_connection(settings: Settings | None = None, timeout_s: float = 3.0) -> None:
    """Fail fast, naming the URL (password masked), before anything waits on an absent Redis.

    Celery and the state client ride out outages with long retries, which is right for a worker
    and wrong for a command that has not started anything yet.
    """
    settings = settings or get_settings()
    if not settings.broker_url:
        raise FleetUnavailable("broker_url: FRAMEFLEET_BROKER_URL is not set (`framefleet demo` starts its own)")
    uses = {settings.broker_url: "broker"}
    uses.setdefault(settings.backend_url, "result backend")
    uses.setdefault(settings.state_url, "job state Redis")
    for url, role in uses.items():
        try:
            # A sentinel:// URL: the sentinels are asked for the master, then the master is pinged.
            client = connect(url, settings, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                             retry=Retry(NoBackoff(), 0))
        except ValueError as error:
            raise FleetUnavailable(f"{role} URL {masked(url)}: {error}") from None
        try:
            client.ping()
        except redis.RedisError as error:
            raise FleetUnavailable(f"cannot reach the {role} at {masked(url)} ({error})") from None
        finally:
            client.close()


def masked(url: str) -> str:
    """The URL with its passwords masked; each part of a ``sentinel://...;sentinel://...`` list too."""
    return ";".join(sanitize_url(part) for part in url.split(";"))


def submit_job(app: Celery, kind: str, request: dict | str, timeout_s: float = 30.0) -> str:
    """Enqueue a job by task name; returns its id once the control queue has accepted it.

    A request the fleet refuses raises the task's error, whose message names the field. One over
    this process's size limits (``max_request_bytes``, the frame and count limits) is refused here,
    before it is sent: the fleet would refuse it too, after the broker had carried all of it.
    """
    precheck_request(kind, request, get_settings())
    # Poll the stored result rather than ``AsyncResult.get()``: get() subscribes to the task's
    # children too and leaves them pending in this process long after the job id is known.
    return _send_and_wait(app, CREATE_TASKS[kind], request, timeout_s=timeout_s)["job_id"]


EXPIRY_GRACE_S = 1.0


class NotTaken(TimeoutError):
    """No worker took the task before it expired: it will never run, so sending it again is safe."""


def _send_and_wait(app: Celery, task: str, *arguments, timeout_s: float = 30.0):
    """Send ``task`` and wait for its result.

    The message expires after ``timeout_s``: a task no worker has taken by then is discarded
    unrun (Celery's ``expires``), so a caller that gives up may send it again without it running
    twice (a create then never meets ``JobExists`` from its own first attempt). A task a worker
    has started is waited for to the end of its time limit.
    """
    queue = TASK_QUEUES[task]
    task_id = app.send_task(task, args=list(arguments), expires=timeout_s).id
    sent = time.monotonic()
    started_limit = task_time_limits(get_settings())[task]["time_limit"]
    while True:
        meta = app.backend.get_task_meta(task_id)
        if meta["status"] == "SUCCESS":
            return meta["result"]
        if meta["status"] == "FAILURE":
            raise app.backend.exception_to_python(meta["result"])
        waited = time.monotonic() - sent
        # A grace past the expiry: a worker that started the task just before it has stored STARTED.
        if meta["status"] in ("PENDING", "REVOKED") and waited > timeout_s + EXPIRY_GRACE_S:
            raise NotTaken(f"{queue}: no {queue} worker took {task} within {timeout_s:g}s; "
                           "it expired unrun, so sending it again is safe")
        if waited > timeout_s + started_limit:
            raise TimeoutError(f"{queue}: {task} started but did not finish within its {started_limit:g}s time limit")
        time.sleep(0.05)


def _known(job_id: str) -> None:
    if not Job(job_id).exists():
        raise JobNotFound(f"job_id: no job {job_id!r}")


def resume_job(app: Celery, job_id: str, timeout_s: float = 30.0) -> dict:
    """Continue a job from its stored state (e.g. after every worker died and the broker was wiped)."""
    _known(job_id)
    return _send_and_wait(app, RESUME_JOB, job_id, timeout_s=timeout_s)


def cancel_job(app: Celery, job_id: str, timeout_s: float = 30.0) -> dict:
    """Cancel a job: queued tasks revoked, paid predictions cancelled, manifest marked cancelled."""
    _known(job_id)
    return _send_and_wait(app, CANCEL_JOB, job_id, timeout_s=timeout_s)


def choose_candidate(app: Celery, job_id: str, frame: str, variation_index: int, timeout_s: float = 30.0) -> dict:
    """Make another candidate the frame's selection; the frames that chain from it regenerate."""
    _known(job_id)
    return _send_and_wait(app, CHOOSE_CANDIDATE, job_id, frame, variation_index, timeout_s=timeout_s)


def regenerate_frame(app: Celery, job_id: str, frame: str, options: dict | None = None,
                     timeout_s: float = 30.0) -> dict:
    """Generate a frame again (options: prompt, overrides, cascade); see README "Iterating"."""
    _known(job_id)
    return _send_and_wait(app, REGENERATE_FRAME, job_id, frame, options or {}, timeout_s=timeout_s)


def list_jobs(app: Celery, active_only: bool = False, limit: int = 50, timeout_s: float = 30.0) -> list[dict]:
    return _send_and_wait(app, LIST_JOBS, active_only, limit, timeout_s=timeout_s)


def status_updates(job_id: str, idle_s: float = 1.0) -> Iterator[JobStatus]:
    """The job's status now and after every change (its events channel), until it is done; also
    every ``idle_s`` without an event, so a missed message only delays an update."""
    pubsub = Job(job_id).progress.subscribe()
    try:
        while True:
            status = job_status(job_id)
            yield status
            if status.state == "done":
                return
            pubsub.get_message(timeout=idle_s)
    finally:
        pubsub.close()


def job_status(job_id: str) -> JobStatus:
    return Job(job_id).progress.read()


def wait_for_job(job_id: str, timeout_s: float = 600.0, poll_s: float = 0.2, revision: int = 0) -> JobStatus:
    """Wait until the job (at ``revision`` or later) is done."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = job_status(job_id)
        if status.state == "done" and status.revision >= revision:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not done after {timeout_s}s: {status.stage} {status.percent}%")
        time.sleep(poll_s)
