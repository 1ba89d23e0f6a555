"""A main app's Celery app as its own developers write it: Celery's default settings (no broker
transport options), its own callback queue, and no framefleet import.

The tests run it with the oldest client framefleet supports (`.venv-mainapp`, built by
`make test`; docs/main-app-clients.md), in processes of their own.
"""

import json
import os

import redis
from celery import Celery

BROKER_URL = os.environ["MAINAPP_BROKER_URL"]
CALLBACK_QUEUE = "mainapp"
RECEIVED = "mainapp:callbacks"  # every callback this app's worker ran; tests/contracts.py checks them too

app = Celery("mainapp", broker=BROKER_URL, backend=BROKER_URL)
# Routing is configuration, not a transport option: the fleet's entry tasks by name (README).
app.conf.task_routes = {"framefleet.*.create": {"queue": "intake"}, "framefleet.*": {"queue": "control"}}
app.conf.task_default_queue = CALLBACK_QUEUE


@app.task(name="mainapp.storyboard_done")
def storyboard_done(done: dict) -> None:
    redis.Redis.from_url(BROKER_URL).rpush(RECEIVED, json.dumps(done))
