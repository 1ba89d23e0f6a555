"""A password-protected Redis works for the job state and the Celery app (same URLs as production)."""

from __future__ import annotations

import pytest
import redis
from framefleet.config.celery import celery_config
from framefleet.config.settings import Settings
from framefleet.tasks.job.model import Job
from framefleet.workers.local_redis import LocalRedis

pytestmark = pytest.mark.integration


def test_password_in_the_url_is_used_and_required():
    with LocalRedis(password="s3cret-pw") as server:
        assert server.url.startswith("redis://:s3cret-pw@")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        state = Job("auth-job", client=client)
        state.cancel(0)
        assert state.cancelled()
        config = celery_config(Settings(broker_url=server.url))
        assert config["broker_url"] == config["result_backend"] == server.url
        from celery import Celery

        app = Celery(set_as_current=False)
        app.conf.update(config)
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
