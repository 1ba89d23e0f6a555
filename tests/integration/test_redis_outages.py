"""A Redis that is away for a moment (a restart, a Sentinel failover) is ridden out where a worker
writes to it outside a task's own retries: publishing a task, counting a chord's part."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import framefleet.tasks.runtime.celery_compat  # noqa: F401 (the fixes every worker loads)
import pytest
import redis
from celery import Celery
from framefleet.config.celery import SCORE_VARIATIONS, TASK_QUEUES, celery_config
from framefleet.config.settings import Settings
from framefleet.workers.local_redis import LocalRedis

pytestmark = pytest.mark.integration

OUTAGE_S = 1.5  # longer than Celery's default publish retries (0.6 s), as a failover is


@pytest.fixture
def server(tmp_path) -> Iterator[LocalRedis]:
    with LocalRedis(data_dir=tmp_path / "redis") as local:
        yield local


@pytest.fixture
def app(server) -> Iterator[Celery]:
    fleet_app = Celery("outage", set_as_current=False)
    fleet_app.conf.update(celery_config(Settings(broker_url=server.url)))
    yield fleet_app
    fleet_app.close()


@contextmanager
def away_for(server: LocalRedis, seconds: float) -> Iterator[None]:
    """Redis stops (writing its append-only file) and starts again ``seconds`` later, on the same port."""
    server.stop(remove_data=False)
    restart = threading.Timer(seconds, server.start)
    restart.start()
    try:
        yield
    finally:
        restart.join()


def queued(server: LocalRedis, queue: str) -> int:
    return redis.Redis.from_url(server.url).llen(queue)


def test_a_task_sent_while_redis_is_away_is_sent_once_it_is_back(app, server):
    app.send_task(SCORE_VARIATIONS, args=[[], "job", "frame"], ignore_result=True)  # connected before the outage
    with away_for(server, OUTAGE_S):
        app.send_task(SCORE_VARIATIONS, args=[[], "job", "frame"], ignore_result=True)
    assert queued(server, TASK_QUEUES[SCORE_VARIATIONS]) == 2


def test_a_chord_counts_a_finished_header_task_while_redis_is_away(app, server):
    """The chord body is sent once its one header task is counted, after the outage, not failed."""
    group_id = str(uuid.uuid4())
    app.backend.set_chord_size(group_id, 1)
    body = app.signature(SCORE_VARIATIONS, args=("job", "frame"))
    header_task = type("Request", (), {"id": str(uuid.uuid4()), "group": group_id, "group_index": 0,
                                       "chord": body})()
    with away_for(server, OUTAGE_S):
        app.backend.on_chord_part_return(header_task, "SUCCESS", {"index": 1})
    assert queued(server, TASK_QUEUES[SCORE_VARIATIONS]) == 1
    app.backend.on_chord_part_return(header_task, "SUCCESS", {"index": 1})  # a redelivered copy: counted once
    assert queued(server, TASK_QUEUES[SCORE_VARIATIONS]) == 1
