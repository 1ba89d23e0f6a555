"""Celery configuration and the one routing table every worker shares."""

from __future__ import annotations

from kombu.transport import redis as kombu_redis

from framefleet.config.settings import Settings

QUEUES = ("intake", "control", "llm", "images", "gpu")

# Task name → queue. Every task is named explicitly, so the main app and Flower see these names.
# Creates run on `intake`: validating a request and fetching its reference URL (up to the fetch
# deadline) never holds a thread that selects frames, finalizes jobs or runs the watchdog.
TASK_QUEUES = {
    "framefleet.storyboard.create": "intake",
    "framefleet.references.create": "intake",
    "framefleet.jobs.status": "control",
    "framefleet.jobs.resume": "control",
    "framefleet.jobs.cancel": "control",
    "framefleet.jobs.watchdog": "control",
    "framefleet.jobs.finalize": "control",
    "framefleet.jobs.notify": "control",
    "framefleet.jobs.list": "control",
    "framefleet.frames.choose": "control",
    "framefleet.frames.regenerate": "control",
    "framefleet.frames.select": "control",
    "framefleet.prompts.enhance": "llm",
    "framefleet.images.generate_variation": "images",
    "framefleet.scoring.score_variations": "gpu",
}

# How each queue's workers run by default: (pool, concurrency).
WORKER_SHAPES = {
    "intake": ("threads", 8),
    "control": ("threads", 4),
    "llm": ("threads", 16),
    "images": ("threads", 16),
    "gpu": ("solo", 1),
}


# Message priorities (tasks/scheduling.py). kombu's Redis transport keeps each queue as one list
# per priority step, `queue` (priority 0, served first) and `queue<sep><step>` for the others. The
# fleet keeps kombu's default separator and steps, which every main app with default settings
# also uses: bindings either side writes the other can read (docs/main-app-clients.md).
# Queue-length metrics must count every list (deploy/k8s/keda.yaml), and so must anything that
# looks for a job's messages (tasks/broker.py).
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
    limits["framefleet.storyboard.create"] = limits["framefleet.references.create"] = {
        "soft_time_limit": 90, "time_limit": 120}
    limits["framefleet.prompts.enhance"] = {"soft_time_limit": 1800, "time_limit": 1900}
    generation = settings.replicate_prediction_timeout_s + 300
    limits["framefleet.images.generate_variation"] = {"soft_time_limit": generation, "time_limit": generation + 60}
    limits["framefleet.scoring.score_variations"] = {"soft_time_limit": 600, "time_limit": 660}
    return limits


def celery_config(settings: Settings) -> dict:
    # Nothing else: a transport option a main app does not share breaks its traffic (above).
    transport_options = {"visibility_timeout": settings.visibility_timeout_s}
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
        "broker_transport_options": transport_options,
        "result_backend_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
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
            "framefleet-watchdog": {"task": "framefleet.jobs.watchdog", "schedule": settings.watchdog_interval_s},
        },
    }
