"""The official OpenAI and Replicate clients against local API stand-ins (real Redis for the
prediction ledger and the fleet-wide rate limit)."""

from __future__ import annotations

import time

import pytest
from framefleet.config.settings import Settings
from framefleet.tasks.job.model import Job
from framefleet.tasks.providers.adapters import image_model_adapter
from framefleet.tasks.providers.base import GenerationStopped, ImageGenerationError, ImageRequest
from framefleet.tasks.providers.openai_llm import EnhancementError, OpenAIPromptAgents
from framefleet.tasks.providers.ratelimit import TRANSIT_MARGIN_S, FleetRateLimiter, RateLimitDeadline
from framefleet.tasks.providers.replicate_images import ReplicateImageGenerator
from framefleet.tasks.steps.enhance import enhance_prompt_iterative

from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.replicate_api import FakeReplicate
from tests.helpers import png_bytes, stored_job, unique_id

pytestmark = pytest.mark.integration


@pytest.fixture
def openai_server(monkeypatch, broker_url):
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


@pytest.fixture
def generator(replicate_server):
    """Generators on the stand-in; their watcher threads are stopped at the end of the test."""
    made: list[ReplicateImageGenerator] = []

    def make(**settings) -> ReplicateImageGenerator:
        values = {"replicate_api_token": "r8-test", "replicate_poll_interval_s": 0.02,
                  "replicate_watch_lease_s": 0.5, "replicate_data_url_max_bytes": 0, **settings}
        made.append(ReplicateImageGenerator(Settings(**values)))
        return made[-1]

    yield make
    for each in made:
        each.close()


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
    assert team.usage == {"llm_calls": 4, "prompt_tokens": 400, "completion_tokens": 80,
                          "rate_limit_waits": 0, "rate_limit_wait_ms": 0}
    assert result.rounds[0].usage == {"llm_calls": 2, "prompt_tokens": 200, "completion_tokens": 40,
                                      "rate_limit_waits": 0, "rate_limit_wait_ms": 0}


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


def test_a_request_limit_below_the_concurrency_queues_every_request_without_failing(openai_server):
    """Six enhancements at once against 2 requests per second: the fleet limiter (set above the
    stand-in's limit, so 429s do happen) and the 429 waits let every one finish, each wait counted."""
    from concurrent.futures import ThreadPoolExecutor

    openai_server.limits["requests"], openai_server.window_s = 2, 1.0
    teams = [agents(openai_requests_per_minute=3, openai_rate_window_s=1.0) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        prompts = list(pool.map(lambda team: team.creative_director("a dog", "a dog", None), teams))
    assert prompts == ["a dog refined"] * 6
    assert len(openai_server.requests) == 6 and openai_server.throttled >= 1
    assert sum(team.usage["rate_limit_waits"] for team in teams) >= 2
    assert all(team.usage["llm_calls"] == 1 for team in teams)


def test_the_total_wait_deadline_raises_rate_limit_deadline(openai_server):
    openai_server.limits["requests"], openai_server.window_s = 1, 30.0
    agents(openai_requests_per_minute=100).creative_director("a cat", "a cat", None)
    team = agents(openai_requests_per_minute=100, openai_rate_limit_max_wait_s=1.0)
    with pytest.raises(RateLimitDeadline, match="^rate limited"):
        team.creative_director("a cat", "a cat", None)
    assert openai_server.throttled == 1  # the 429's reset (30 s) is past the deadline: no second try
    assert len(openai_server.requests) == 1


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


def test_prediction_with_input_images_uploaded_once_per_job(replicate_server, generator):
    job_id = stored_job(unique_id("rep"))
    images = [png_bytes((255, 0, 0)), png_bytes((0, 0, 255))]
    made = generator()
    data = made.generate(request(job_id, input_images=images, model="bytedance/seedream-4"))
    made.generate(request(job_id, input_images=images, variation=2, ledger_key="v2#0", model="bytedance/seedream-4"))
    first, second = replicate_server.creations
    assert first["model"] == "bytedance/seedream-4" and first["input"]["seed"] == 7
    assert [replicate_server.file_bytes(u) for u in first["input"]["image_input"]] == images
    assert second["input"]["image_input"] == first["input"]["image_input"]  # the cached file URLs
    assert replicate_server.call_counts()["files"] == 2
    ttls = [made.board.r.ttl(key) for key in made.board.r.scan_iter(f"framefleet:replicate:job:{job_id}:file:*")]
    assert len(ttls) == 2 and all(0 < ttl <= 86400 for ttl in ttls)  # reused only while Replicate keeps the file
    assert data == replicate_server.output_png(first["id"])
    assert first["cancel_after"] == 300.0  # the server-side deadline
    assert replicate_server.call_counts()["get"] == 0  # status came from the listings
    assert Job(job_id).ledger.costs()["total"] == {"predictions_created": 2}


def test_small_input_images_go_inline_as_data_urls(replicate_server, generator):
    image = png_bytes((0, 255, 0))
    generator(replicate_data_url_max_bytes=len(image)).generate(request(unique_id("inline"), input_images=[image]))
    (creation,) = replicate_server.creations
    (url,) = creation["input"]["image_input"]
    assert url.startswith("data:image/png;base64,") and replicate_server.file_bytes(url) == image
    assert replicate_server.call_counts()["files"] == 0


def test_create_429_waits_for_retry_after_then_creates_once(replicate_server, generator):
    replicate_server.create_script = [("429", 1), ("500",)]
    job_id = stored_job(unique_id("rep429"))
    started = time.monotonic()
    generator().generate(request(job_id))
    assert time.monotonic() - started >= 1.0
    assert replicate_server.create_attempts == 3 and len(replicate_server.creations) == 1
    assert Job(job_id).ledger.costs()["total"]["creation_waits"] == 1  # the fleet-wide pause after the 429


def test_failed_prediction_is_an_expected_error(replicate_server, generator):
    replicate_server.fail_seeds = {7}
    with pytest.raises(ImageGenerationError, match="NSFW"):
        generator().generate(request(unique_id("repfail"), model="bytedance/seedream-4"))


def test_slow_prediction_is_cancelled_at_the_timeout(replicate_server, generator):
    replicate_server.never_finish = True
    with pytest.raises(ImageGenerationError, match="timed out"):
        generator(replicate_prediction_timeout_s=0.3).generate(request(unique_id("repslow")))
    assert replicate_server.canceled == [replicate_server.creations[0]["id"]]


def test_should_stop_cancels_the_prediction_on_replicate(replicate_server, generator):
    replicate_server.never_finish = True
    checks = []

    def straggler_cut():
        checks.append(time.monotonic())
        return "straggler cut" if len(checks) >= 3 else None

    with pytest.raises(GenerationStopped, match="straggler cut"):
        generator().generate(request(unique_id("stop")), should_stop=straggler_cut)
    assert replicate_server.canceled == [replicate_server.creations[0]["id"]]


def test_a_prediction_missing_from_the_listings_is_recovered_by_the_reconcile(replicate_server, generator):
    made = generator(replicate_reconcile_after_s=0.3)
    replicate_server.hidden_from_list = {"pred1"}  # the first prediction never shows up in a listing
    data = made.generate(request(unique_id("reconcile")))
    assert replicate_server.creations[0]["id"] == "pred1"
    assert data == replicate_server.output_png("pred1")
    assert replicate_server.call_counts()["get"] >= 1 and replicate_server.call_counts()["list"] >= 2


def test_the_watcher_lease_passes_on_when_its_holder_dies(replicate_server, generator):
    first, second = generator(), generator()
    first.generate(request(unique_id("lease")))
    assert first.watcher.holding and not second.watcher.holding
    first.watcher._stop.set()  # the holder's process dies: no release, its lease just expires
    first.watcher._thread.join()
    replicate_server.run_s = 1.0
    second.generate(request(unique_id("lease2")))
    assert second.watcher.holding


def test_a_redelivered_call_resumes_the_recorded_prediction(replicate_server, generator, monkeypatch):
    job_id = unique_id("redeliver")
    crashed = generator()

    def worker_dies(_prediction_id, _should_stop):
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
    assert 0 < second.try_acquire() <= 1.0 + TRANSIT_MARGIN_S
    started = time.monotonic()
    first.acquire(timeout_s=5.0)
    assert time.monotonic() - started >= 0.5


def test_token_budget_and_the_fleet_wide_pause(broker_url):
    import redis

    limiter = FleetRateLimiter(redis.Redis.from_url(broker_url), unique_id("tokens"), limit=10, window_s=5.0,
                               token_limit=100)
    assert limiter.try_acquire(tokens=60) == 0
    assert 4.0 < limiter.try_acquire(tokens=60) <= 5.0 + TRANSIT_MARGIN_S  # the tokens are spent, requests are not
    assert limiter.try_acquire(tokens=40) == 0
    other = FleetRateLimiter(redis.Redis.from_url(broker_url), unique_id("paused"), limit=10, window_s=5.0)
    other.pause(2.0)
    assert 1.0 < other.try_acquire() <= 2.0
    with pytest.raises(RateLimitDeadline, match="^rate limited"):
        other.acquire(timeout_s=0.5)


def test_watcher_health_check(replicate_server, generator):
    import socket

    from framefleet.tasks.providers.replicate_watcher import health

    made = generator()
    host = socket.gethostname()
    made.generate(request(unique_id("health")))
    ok, message = health(made.settings, made.board.r, host)
    assert ok and "lease holder" in message
    made.close()  # the thread stops beating: after 3 leases (1.5 s here) this host is unhealthy
    made.board.r.hset(made.board.watchers, host, made.board.r.time()[0] - 10)
    ok, message = health(made.settings, made.board.r, host)
    assert not ok and "silent" in message
