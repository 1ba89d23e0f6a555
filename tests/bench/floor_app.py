"""Celery's own floor for a framefleet frame: a bare Celery app with the fleet's settings and the
same frame shape, for `make bench-overhead`.

A frame is a chord of 4 no-op tasks on `images` → a no-op on `gpu` → a task on `control` that
sends the next frame's chord (or counts the job done), with the fleet's Celery configuration
(JSON, late acks, prefetch 1, Redis results, task events, message priorities, routing by name).
Run its workers with ``celery -A tests.bench.floor_app worker -Q images`` (and gpu, control).
``FLOOR_VARIATION_S`` makes each variation take that long (a provider's latency), so the floor
can run at a given frame rate.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery, chord

from framefleet.config.celery import celery_config
from framefleet.config.settings import Settings

VARIATIONS = 4
FRAMES_DONE = "floor:frames-done"  # a counter the bench polls
VARIATION_S = float(os.environ.get("FLOOR_VARIATION_S", "0"))

app = Celery("floor")
settings = Settings(broker_url=os.environ.get("FLOOR_BROKER_URL", "redis://127.0.0.1:6379/0"))
config = celery_config(settings)
config["task_routes"] = {"floor.variation": {"queue": "images"}, "floor.score": {"queue": "gpu"},
                         "floor.select": {"queue": "control"}, "floor.start": {"queue": "control"}}
config.pop("beat_schedule")
config.pop("task_annotations")
app.conf.update(config)
counter = redis.Redis.from_url(settings.broker_url)


def point_at(url: str) -> None:
    """Send to (and count in) the Redis at ``url``, dropping connections pooled for an earlier one
    (as framefleet's configure() does)."""
    global counter
    app.conf.update(broker_url=url, result_backend=url)
    app._after_fork()
    vars(app._local).pop("backend", None)
    counter = redis.Redis.from_url(url)


def send_frame(job: str, frame: int, frames: int) -> None:
    header = [variation.s(job, frame, index) for index in range(1, VARIATIONS + 1)]
    chord(header, score.s(job, frame) | select.s(job, frame, frames)).apply_async()


@app.task(name="floor.start")
def start(job: str, frames: int) -> None:
    """A job's first frame, sent from a worker as framefleet's create sends its first steps."""
    send_frame(job, 0, frames)


@app.task(name="floor.variation")
def variation(job: str, frame: int, index: int) -> dict:
    time.sleep(VARIATION_S)
    return {"index": index, "key": f"{job}/{frame}/{index}"}


@app.task(name="floor.score")
def score(results: list[dict], job: str, frame: int) -> dict:
    return {"variations": results, "best": results[0]["index"]}


@app.task(name="floor.select")
def select(scored: dict, job: str, frame: int, frames: int) -> None:
    counter.incr(FRAMES_DONE)
    if frame + 1 < frames:
        send_frame(job, frame + 1, frames)
