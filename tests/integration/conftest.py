"""Fixtures for tests that run pipeline steps in this process (on the real test Redis)."""

from __future__ import annotations

import pytest
from framefleet.config.settings import get_settings
from framefleet.tasks.artifacts.store import fleet_store

from tests.helpers import purge_queues


@pytest.fixture(autouse=True)
def unfinished_jobs_leave_the_active_list(broker_url):
    """Jobs a test leaves unfinished (steps run here, messages purged, a fleet stopped mid-job) leave
    the active list when it ends: no later fleet's watchdog finds them stalled and resumes them."""
    import redis
    from framefleet.tasks.job.keys import ACTIVE_JOBS

    client = redis.Redis.from_url(broker_url, decode_responses=True)
    before = client.smembers(ACTIVE_JOBS)
    yield
    try:
        if left := client.smembers(ACTIVE_JOBS) - before:
            client.srem(ACTIVE_JOBS, *left)
    except redis.ConnectionError:  # a test that stopped the session's Redis and left it stopped
        pass
    client.close()


@pytest.fixture
def local_steps(broker_url, tmp_path, monkeypatch, celery_app):
    """This process runs steps itself: offline providers with some latency, a store of its own."""
    monkeypatch.setenv("FRAMEFLEET_STORE_URL", f"file://{tmp_path / 'artifacts'}")
    monkeypatch.setenv("FRAMEFLEET_OFFLINE_LLM_LATENCY_S", "0.05")
    monkeypatch.setenv("FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S", "0.3")
    monkeypatch.setenv("FRAMEFLEET_LLM_PROVIDER", "offline")
    monkeypatch.setenv("FRAMEFLEET_IMAGE_PROVIDER", "offline")
    monkeypatch.setenv("FRAMEFLEET_SCORER", "heuristic")
    for cached in (get_settings, fleet_store):
        cached.cache_clear()
    from framefleet.tasks.providers import image_generator

    image_generator.cache_clear()
    yield fleet_store()
    purge_queues(celery_app)  # follow-up steps the racing steps enqueued: no worker runs them here
    for cached in (get_settings, fleet_store, image_generator):
        cached.cache_clear()
