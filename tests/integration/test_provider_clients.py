"""The official OpenAI and Replicate clients against local API stand-ins (real Redis for the
prediction ledger and the fleet-wide rate limit)."""

from __future__ import annotations

import time

import pytest

from config.settings import Settings
from tasks.enhancement import enhance_prompt_iterative
from tasks.state import JobState
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.replicate_api import FakeReplicate
from tests.helpers import png_bytes, unique_id
from workers.providers.adapters import image_model_adapter
from workers.providers.base import ImageGenerationError, ImageRequest
from workers.providers.openai_llm import EnhancementError, OpenAIPromptAgents
from workers.providers.replicate_images import ReplicateImageGenerator
from workers.ratelimit import FleetRateLimiter

pytestmark = pytest.mark.integration


@pytest.fixture
def openai_server(monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        yield server


@pytest.fixture
def replicate_server(monkeypatch, broker_url):
    with FakeReplicate() as server:
        monkeypatch.setenv("REPLICATE_BASE_URL", server.base_url)
        yield server


def agents(**settings) -> OpenAIPromptAgents:
    return OpenAIPromptAgents(Settings(openai_api_key="sk-test", openai_model="test-model", openai_temperature=0.3,
                                       **settings))


def generator(**settings) -> ReplicateImageGenerator:
    values = {"replicate_api_token": "r8-test", "replicate_poll_interval_s": 0.02, **settings}
    return ReplicateImageGenerator(Settings(**values))


def request(job_id: str, **extra) -> ImageRequest:
    return ImageRequest(**{"prompt": "a lighthouse", "aspect_ratio": "16:9", "variation": 1, "seed": 7,
                           "job_id": job_id, "frame": "clip_001_start",
                           "ledger_key": f"jobs/{job_id}/variations/clip_001_start/v1.png#0", **extra})


# OpenAI ------------------------------------------------------------------------------------
def test_two_agents_request_bodies_and_the_loop_stops_at_threshold(openai_server):
    team = agents()
    result = enhance_prompt_iterative("a keeper on the stairs", team, max_iterations=4, score_threshold=85,
                                      convergence_epsilon=0.5)
    assert result.stop_reason == "threshold" and len(result.rounds) == 2 and result.final_score == 90
    assert result.final_prompt == "a keeper on the stairs refined refined"
    cd_first, pe_first, cd_second, _ = openai_server.requests
    assert [r["agent"] for r in openai_server.requests] == ["CreativeDirectorReply", "PromptEngineerReply"] * 2
    assert cd_first["auth"] == "Bearer sk-test"
    assert cd_first["body"]["model"] == "test-model" and cd_first["body"]["temperature"] == 0.3
    system, user = cd_first["body"]["messages"]
    assert "Creative Director" in system["content"] and "still frames" in system["content"]
    assert "a keeper on the stairs" in user["content"] and "critique" not in user["content"]
    pe_system = pe_first["body"]["messages"][0]["content"]
    for dimension in ("completeness", "specificity", "professionalism", "cinematography", "brand_alignment"):
        assert dimension in pe_system
    second_user = cd_second["body"]["messages"][1]["content"]
    assert "add lens detail" in second_user and "Missing: lens" in second_user  # critique acted on
    assert team.usage == {"llm_calls": 4, "prompt_tokens": 400, "completion_tokens": 80}
    assert result.rounds[0].usage == {"llm_calls": 2, "prompt_tokens": 200, "completion_tokens": 40}


def test_an_unparsable_reply_is_asked_again_once(openai_server):
    openai_server.script = [("garbage",)]
    assert agents().creative_director("a cat", "a cat", None) == "a cat refined"
    openai_server.script = [("garbage",), ("reply", {"wrong": "shape"})]
    with pytest.raises(EnhancementError, match="no parsable reply after 2 attempts"):
        agents().prompt_engineer("a cat")


def test_429_waits_for_retry_after_and_5xx_is_retried(openai_server):
    openai_server.script = [("429", 1), ("500",)]
    started = time.monotonic()
    assert agents().creative_director("a dog", "a dog", None) == "a dog refined"
    assert time.monotonic() - started >= 1.0
    assert len(openai_server.requests) == 3


def test_persistent_server_errors_become_an_enhancement_error(openai_server):
    openai_server.script = [("500",)] * 3
    with pytest.raises(EnhancementError):
        agents(openai_max_retries=2).creative_director("a dog", "a dog", None)


# Replicate ---------------------------------------------------------------------------------
def test_adapters_map_inputs_to_each_models_fields():
    nano = image_model_adapter("google/nano-banana").build_input("p", ["ref", "prev"], "16:9", 5)
    assert nano == {"prompt": "p", "image_input": ["ref", "prev"], "aspect_ratio": "16:9", "output_format": "png"}
    kontext = image_model_adapter("black-forest-labs/flux-kontext-pro").build_input("p", ["ref", "prev"], "1:1", 5)
    assert kontext["input_image"] == "prev" and kontext["seed"] == 5  # single-image model: the newest frame
    schnell = image_model_adapter("black-forest-labs/flux-schnell").build_input("p", ["ref"], "1:1", 5)
    assert "image_input" not in schnell and "input_image" not in schnell
    with pytest.raises(ValueError, match="image_model"):
        image_model_adapter("someone/unknown")


def test_prediction_with_uploaded_input_images(replicate_server):
    job_id = unique_id("rep")
    images = [png_bytes((255, 0, 0)), png_bytes((0, 0, 255))]
    data = generator().generate(request(job_id, input_images=images, model="bytedance/seedream-4"))
    (creation,) = replicate_server.creations
    assert creation["model"] == "bytedance/seedream-4" and creation["input"]["seed"] == 7
    assert [replicate_server.file_bytes(u) for u in creation["input"]["image_input"]] == images
    assert data == replicate_server.output_png(creation["id"])
    assert JobState(job_id).costs()["total"] == {"predictions_created": 1}


def test_create_429_waits_for_retry_after_then_creates_once(replicate_server):
    replicate_server.create_script = [("429", 1), ("500",)]
    started = time.monotonic()
    generator().generate(request(unique_id("rep429")))
    assert time.monotonic() - started >= 1.0
    assert replicate_server.create_attempts == 3 and len(replicate_server.creations) == 1


def test_failed_prediction_is_an_expected_error(replicate_server):
    replicate_server.fail_seeds = {7}
    with pytest.raises(ImageGenerationError, match="NSFW"):
        generator().generate(request(unique_id("repfail"), model="bytedance/seedream-4"))


def test_slow_prediction_is_cancelled_at_the_timeout(replicate_server):
    replicate_server.never_finish = True
    with pytest.raises(ImageGenerationError, match="timed out"):
        generator(replicate_prediction_timeout_s=0.3).generate(request(unique_id("repslow")))
    assert replicate_server.canceled == [replicate_server.creations[0]["id"]]


def test_a_redelivered_call_resumes_the_recorded_prediction(replicate_server, monkeypatch):
    job_id = unique_id("redeliver")
    crashed = generator()

    def worker_dies(_prediction_id):
        raise SystemExit("worker killed while waiting")

    monkeypatch.setattr(crashed, "_wait_for", worker_dies)
    with pytest.raises(SystemExit):
        crashed.generate(request(job_id))
    assert len(replicate_server.creations) == 1
    data = generator().generate(request(job_id))  # the redelivered task, on another worker
    assert len(replicate_server.creations) == 1
    assert data == replicate_server.output_png(replicate_server.creations[0]["id"])
    assert generator().generate(request(job_id, ledger_key=f"jobs/{job_id}/x.png#1")) != data  # a retry pays again
    assert len(replicate_server.creations) == 2


def test_rate_limiter_counts_across_clients(broker_url):
    import redis

    name = unique_id("limit")
    first = FleetRateLimiter(redis.Redis.from_url(broker_url), name, limit=3, window_s=1.0)
    second = FleetRateLimiter(redis.Redis.from_url(broker_url), name, limit=3, window_s=1.0)
    assert [first.try_acquire(), second.try_acquire(), first.try_acquire()] == [0, 0, 0]
    assert 0 < second.try_acquire() <= 1.0
    started = time.monotonic()
    first.acquire()
    assert time.monotonic() - started >= 0.5
