"""A main app's own Celery app, as README "Completion callback" shows it: it does not import
framefleet, keeps Celery's default settings, and records every completion callback it receives in
a Redis list. Its worker consumes the queue it is started on (`-Q app`)."""

import json
import os

import redis
from celery import Celery

app = Celery("mainapp", broker=os.environ["MAINAPP_BROKER_URL"])
RECEIVED = "mainapp:callbacks"  # tests/integration/test_iteration.py reads it


@app.task(name="app.storyboard_done")
def storyboard_done(payload: dict) -> None:
    redis.Redis.from_url(os.environ["MAINAPP_BROKER_URL"]).rpush(RECEIVED, json.dumps(payload))
