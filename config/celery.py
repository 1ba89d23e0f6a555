"""Celery configuration and the one routing table every worker shares."""

from __future__ import annotations

from framefleet.config.settings import Settings, is_sentinel_url
from kombu.transport import redis as kombu_redis

QUEUES = ("intake", "control", "llm", "images", "gpu")

# Task names: what main apps send (README, "Main-app contract"), Flower shows and routing uses.
# The fleet's code names tasks only through these constants.
CREATE_STORYBOARD = "framefleet.storyboard.create"
CREATE_REFERENCES = "framefleet.references.create"
JOB_STATUS = "framefleet.jobs.status"
RESUME_JOB = "framefleet.jobs.resume"
CANCEL_JOB = "framefleet.jobs.cancel"
WATCHDOG = "framefleet.jobs.watchdog"
FINALIZE_JOB = "framefleet.jobs.finalize"
NOTIFY_MAIN_APP = "framefleet.jobs.notify"
LIST_JOBS = "framefleet.jobs.list"
CHOOSE_CANDIDATE = "framefleet.frames.choose"
REGENERATE_FRAME = "framefleet.frames.regenerate"
SELECT_VARIATION = "framefleet.frames.select"
ENHANCE_PROMPT = "framefleet.prompts.enhance"
GENERATE_VARIATION = "framefleet.images.generate_variation"
SCORE_VARIATIONS = "framefleet.scoring.score_variations"
JUDGE_CANDIDATES = "framefleet.frames.judge"
CREATE_TASKS = {"storyboard": CREATE_STORYBOARD, "references": CREATE_REFERENCES}

# Task → queue. A job's two ends run on `intake`, its creates and finalizes: validating a request,
# fetching its reference URL (up to the fetch deadline), drawing its contact sheet never hold a
# `control` thread, which selects frames and dispatches the next ones for every job.
TASK_QUEUES = {
    CREATE_STORYBOARD: "intake",
    CREATE_REFERENCES: "intake",
    FINALIZE_JOB: "intake",
    JOB_STATUS: "control",
    RESUME_JOB: "control",
    CANCEL_JOB: "control",
    WATCHDOG: "control",
    NOTIFY_MAIN_APP: "control",
    LIST_JOBS: "control",
    CHOOSE_CANDIDATE: "control",
    REGENERATE_FRAME: "control",
    SELECT_VARIATION: "control",
    ENHANCE_PROMPT: "llm",
    # Between scoring and selection: an API call, so on llm, never holding a GPU while it waits.
    JUDGE_CANDIDATES: "llm",
    GENERATE_VARIATION: "images",
    SCORE_VARIATIONS: "gpu",
}

# How each queue's workers run by default: (pool, concurrency).
WORKER_SHAPES = {
    "intake": ("threads", 8),
    "control": ("threads", 4),
    "llm": ("threads", 16),
    "images": ("threads", 16),
    "gpu": ("solo", 1),
}


# Message priorities (tasks/coordination/dispatch.py). kombu's Redis transport keeps each queue as one list
# per priority step, `queue` (priority 0, served first) and `queue<sep><step>` for the others. The
# fleet keeps kombu's default separator and steps, which every main app with default settings
# also uses: bindings either side writes the other can read (docs/main-app-clients.md).
# Queue-length metrics must count every list (deploy/k8s/keda.yaml), and so must anything that
# looks for a job's messages (tasks/coordination/broker.py).
PRIORITY_STEPS: tuple[int, ...] = tuple(kombu_redis.Channel.priority_steps)


def broker_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages, highest priority (served first) first."""
    return [queue if step == 0 else f"{queue}{kombu_redis.Channel.sep}{step}" for step in PRIORITY_STEPS]


def task_time_limits(settings: Settings) -> dict[str, dict[str, float]]:
    """Soft/hard time limits per task. The prefork pool enforces them; threads and solo pools
    cannot interrupt a thread, so there every blocking call also has its own deadline (reference
    fetch, OpenAI timeout and rate-limit wait, Replicate prediction timeout)."""
    short = {"soft_time_limit": 120, "time_limit": 150}
    limits = {name: short for name in TASK_QUEUES}
    limits[CREATE_STORYBOARD] = limits[CREATE_REFERENCES] = {
        "soft_time_limit": 90, "time_limit": 120}
    limits[ENHANCE_PROMPT] = {"soft_time_limit": 1800, "time_limit": 1900}
    generation = settings.replicate_prediction_timeout_s + 300
    limits[GENERATE_VARIATION] = {"soft_time_limit": generation, "time_limit": generation + 60}
    limits[SCORE_VARIATIONS] = {"soft_time_limit": 600, "time_limit": 660}
    # Both orders at once: the budget wait, then a request, its retries, and one more for a bad reply.
    judge = settings.judge_max_wait_s + 2 * settings.judge_timeout_s * (settings.openai_max_retries + 1) + 60
    limits[JUDGE_CANDIDATES] = {"soft_time_limit": judge, "time_limit": judge + 60}
    return limits


# A step that sends the next one rides out a Redis restart or a Sentinel failover (about 15 s of
# retries, like the job-state client's) instead of failing and waiting for the watchdog. Celery's
# default gives up after 0.6 s.
PUBLISH_RETRY_POLICY = {"max_retries": 10, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}


def transport_options(settings: Settings, url: str | None) -> dict:
    """Nothing but the visibility timeout, and with a sentinel:// URL how to find the master: a
    transport option a main app does not share breaks its traffic (above). ``master_name`` and the
    sentinels' password only say where the master is, so a main app on the same sentinels names them too."""
    options: dict = {"visibility_timeout": settings.visibility_timeout_s}
    if is_sentinel_url(url):
        options["master_name"] = settings.redis_sentinel_master
        if settings.redis_sentinel_password is not None:
            options["sentinel_kwargs"] = {"password": settings.redis_sentinel_password.get_secret_value()}
    return options


def celery_config(settings: Settings) -> dict:
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.backend_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport_options(settings, settings.broker_url),
        "result_backend_transport_options": transport_options(settings, settings.backend_url),
        "broker_connection_retry_on_startup": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        "task_default_queue": "control",
        "task_annotations": task_time_limits(settings),
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "result_expires": settings.job_ttl_s,
        "worker_hijack_root_logger": False,
        # Run one beat per fleet (`celery -A framefleet.workers.app beat`, or `-B` on one control worker).
        "beat_schedule": {
            "framefleet-watchdog": {"task": WATCHDOG, "schedule": settings.watchdog_interval_s},
        },
    }
