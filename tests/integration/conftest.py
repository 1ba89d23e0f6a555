"""Fixtures for tests that run pipeline steps in this process (on the real test Redis)."""

from __future__ import annotations

import pytest
from framefleet.config.settings import get_settings
from framefleet.tasks.artifacts.store import fleet_store

from tests.helpers import purge_queues


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
