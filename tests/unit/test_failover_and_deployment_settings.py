"""Settings for Redis Sentinel and Replicate deployments: what they accept, refuse and configure."""

from __future__ import annotations

import pytest
from framefleet.config.celery import celery_config
from framefleet.config.settings import Settings
from framefleet.tasks.job.redis import sentinel_nodes
from framefleet.tasks.providers.adapters import ImageModelAdapter, image_model_registry, replicate_deployment
from framefleet.workers.client import masked
from pydantic import ValidationError

SENTINELS = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"


def test_a_sentinel_url_needs_the_master_name_naming_the_variable():
    with pytest.raises(ValidationError, match="FRAMEFLEET_BROKER_URL names Redis Sentinel"):
        Settings(broker_url=SENTINELS)
    with pytest.raises(ValidationError, match="FRAMEFLEET_STATE_REDIS_URL names Redis Sentinel"):
        Settings(broker_url="redis://redis:6379/0", state_redis_url=SENTINELS)
    assert Settings(broker_url="redis://redis:6379/0").redis_sentinel_master is None


def test_sentinel_urls_tell_kombu_and_celery_the_master_and_nothing_else():
    config = celery_config(Settings(broker_url=SENTINELS, redis_sentinel_master="framefleet",
                                    redis_sentinel_password="sentinel-pw", visibility_timeout_s=7200))
    for options in (config["broker_transport_options"], config["result_backend_transport_options"]):
        assert options == {"visibility_timeout": 7200, "master_name": "framefleet",
                           "sentinel_kwargs": {"password": "sentinel-pw"}}
    mixed = celery_config(Settings(broker_url=SENTINELS, result_backend="redis://results:6379/1",
                                   redis_sentinel_master="framefleet"))
    assert mixed["broker_transport_options"] == {"visibility_timeout": 3600, "master_name": "framefleet"}
    assert mixed["result_backend_transport_options"] == {"visibility_timeout": 3600}


def test_sentinel_url_parts():
    nodes, master = sentinel_nodes(SENTINELS)
    assert nodes == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert master == {"db": 2, "password": "s3cret"}  # from the first URL, as kombu and Celery read it
    with pytest.raises(ValueError, match="redis:// among sentinel:// URLs"):
        sentinel_nodes("sentinel://a:1;redis://b:2")
    assert masked(SENTINELS).count("s3cret") == 0 and masked(SENTINELS).count(";") == 2


def test_which_deployment_a_model_runs_on():
    settings = Settings(replicate_model="google/nano-banana", replicate_deployment="acme/warm-banana")
    assert replicate_deployment("google/nano-banana", settings) == "acme/warm-banana"
    assert replicate_deployment("bytedance/seedream-4", settings) is None  # not the fleet's model; none in the registry
    assert replicate_deployment("google/nano-banana", Settings()) is None
    entry = {**image_model_registry()["black-forest-labs/flux-schnell"].model_dump(), "deployment": "acme/fast-flux"}
    assert ImageModelAdapter.model_validate(entry).deployment == "acme/fast-flux"
    with pytest.raises(ValidationError, match="deployment"):
        ImageModelAdapter.model_validate({**entry, "deployment": "not a name"})
    with pytest.raises(ValidationError, match="replicate_deployment"):
        Settings(replicate_deployment="acme")
