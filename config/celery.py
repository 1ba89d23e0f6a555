"""Celery configuration and the one routing table every worker shares."""

from __future__ import annotations

from config.settings import Settings

QUEUES = ("control", "llm", "images", "gpu")

# Task name → queue. Every task is named explicitly, so the main app and Flower see these names.
TASK_QUEUES = {
    "framefleet.storyboard.create": "control",
    "framefleet.references.create": "control",
    "framefleet.jobs.start_frames": "control",
    "framefleet.jobs.status": "control",
    "framefleet.jobs.resume": "control",
    "framefleet.jobs.cancel": "control",
    "framefleet.jobs.watchdog": "control",
    "framefleet.jobs.finalize": "control",
    "framefleet.frames.select": "control",
    "framefleet.prompts.enhance": "llm",
    "framefleet.images.generate_variation": "images",
    "framefleet.scoring.score_variations": "gpu",
}

# How each queue's workers run by default: (pool, concurrency).
WORKER_SHAPES = {
    "control": ("threads", 4),
    "llm": ("threads", 16),
    "images": ("threads", 16),
    "gpu": ("solo", 1),
}


def celery_config(settings: Settings) -> dict:
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
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "result_expires": settings.job_ttl_s,
        "worker_hijack_root_logger": False,
        # Run one beat per fleet (`celery -A workers.app beat`, or `-B` on one control worker).
        "beat_schedule": {
            "framefleet-watchdog": {"task": "framefleet.jobs.watchdog", "schedule": settings.watchdog_interval_s},
        },
    }
