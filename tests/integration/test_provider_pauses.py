"""One 429 cannot stop the fleet (issue 21, 4.6): a provider's pause is capped at
provider_max_pause_s, unusable values pause briefly, and every wait for a provider slot has a
deadline and ends when the caller stops. The official clients against the local stand-ins, real
Redis for the limiters (docs/provider-pauses.md)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import pytest
import redis
from framefleet.tasks.providers import ratelimit
from framefleet.tasks.providers.base import GenerationStopped, ImageGenerationError
from framefleet.tasks.providers.ratelimit import DEFAULT_PAUSE_S, FleetRateLimiter, RateLimitDeadline, WaitStopped

from tests.helpers import png_bytes, unique_id
from tests.integration.test_provider_clients import agents, generator, openai_server, replicate_server, request  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

CAP_S = 0.3  # provider_max_pause_s in these tests: every pause they cause is over in a moment
BOUND_S = 30.0  # far above anything a fixed client needs here, far below the pauses and windows asked for


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees its own first warnings (they are logged once per process)."""
    monkeypatch.setattr(ratelimit, "_warned", set())


@pytest.fixture(autouse=True)
def no_budget_outlives_the_test(broker_url):
    """The full windows and pauses set here would hold up a later stand-in that gets the same port
    (the account key is a digest of its URL)."""
    yield
    client = redis.Redis.from_url(broker_url)
    for key in client.scan_iter("framefleet:ratelimit:*"):
        client.delete(key)


def finishes(call, within_s: float = BOUND_S):
    """``call()``'s result (or its exception), failing the test if it is still running after
    ``within_s``: the waits under test must end by themselves."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 — handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within_s)
    if thread.is_alive():
        pytest.fail(f"still waiting after {within_s:.0f}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def record_pauses(limiter: FleetRateLimiter) -> tuple[list, list]:
    """What the client asks ``limiter`` to pause, and the pause key's TTL (ms) right after."""
    asked, ttls = [], []
    original = limiter.pause

    def pause(seconds):
        asked.append(seconds)
        applied = original(seconds)
        ttls.append(limiter.client.pttl(limiter.pause_key))
        return applied

    limiter.pause = pause
    return asked, ttls


def stop_after(seconds: float, reason: str = "cancelled"):
    started = time.monotonic()
    return lambda: reason if time.monotonic() - started >= seconds else None


def ratelimit_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == ratelimit.log.name]


# the limiter ---------------------------------------------------------------------------------
def test_pause_refuses_non_finite_or_negative_seconds_and_caps_the_rest(broker_url):
    limiter = FleetRateLimiter(redis.Redis.from_url(broker_url), unique_id("cap"), limit=10, window_s=5.0,
                               max_pause_s=2.0)
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="finite"):
            limiter.pause(bad)
        assert limiter.client.pttl(limiter.pause_key) == -2  # nothing set
    assert limiter.pause(1e9) == 2.0
    assert 0 < limiter.client.pttl(limiter.pause_key) <= 2000
    assert 0 < limiter.try_acquire() <= 2.0


def test_a_pause_over_the_cap_already_in_redis_is_cut_down(broker_url):
    """A fleet stopped by an older release's 10⁹ s pause is running again after the fix ships."""
    limiter = FleetRateLimiter(redis.Redis.from_url(broker_url), unique_id("stale"), limit=10, window_s=5.0,
                               max_pause_s=CAP_S)
    limiter.client.set(limiter.pause_key, "1", px=10**12)
    assert 0 < limiter.try_acquire() <= CAP_S
    assert 0 < limiter.client.pttl(limiter.pause_key) <= CAP_S * 1000
    assert finishes(lambda: limiter.acquire(timeout_s=BOUND_S)) <= BOUND_S


def test_every_wait_for_a_slot_is_bounded_and_ends_on_stop(broker_url):
    limiter = FleetRateLimiter(redis.Redis.from_url(broker_url), unique_id("stop"), limit=1, window_s=60.0)
    assert limiter.try_acquire() == 0  # the window is full for a minute
    with pytest.raises(TypeError, match="bounded"):
        limiter.acquire()
    with pytest.raises(WaitStopped, match="cancelled") as stopped:
        finishes(lambda: limiter.acquire(timeout_s=120.0, should_stop=stop_after(0.3)))
    assert stopped.value.reason == "cancelled"
    with pytest.raises(RateLimitDeadline, match="^rate limited"):
        finishes(lambda: limiter.acquire(deadline=time.monotonic() + 2.0))


# Replicate -----------------------------------------------------------------------------------
@pytest.mark.parametrize("header, resets_in, asked", [
    ("1e9", "1e9", 1e9),
    ("1000000000", "1000000000", 1e9),
    (None, "999999999", 999999999.0),  # only the body says when
    ("inf", "inf", DEFAULT_PAUSE_S),
    ("nan", "nan", DEFAULT_PAUSE_S),
    ("-5", "-5", DEFAULT_PAUSE_S),
    ("garbage", "garbage", DEFAULT_PAUSE_S),
])
def test_a_creation_429_pauses_the_fleet_at_most_the_cap_then_creates(replicate_server, generator, caplog,
                                                                      header, resets_in, asked):
    replicate_server.throttle("create", header, resets_in)
    made = generator(provider_max_pause_s=CAP_S)
    requested, ttls = record_pauses(made.creations)
    with caplog.at_level(logging.WARNING):
        data = finishes(lambda: made.generate(request(unique_id("rep-pause"))))
    assert replicate_server.throttled["create"] == 1 and len(replicate_server.creations) == 1
    assert data == replicate_server.output_png(replicate_server.creations[0]["id"])
    assert requested == [asked]
    assert len(ttls) == 1 and 0 < ttls[0] <= CAP_S * 1000
    assert len([w for w in ratelimit_warnings(caplog) if "ignoring" in w]) == (1 if asked == DEFAULT_PAUSE_S else 0)


def test_a_listing_429_with_a_huge_retry_after_does_not_stall_the_watcher(replicate_server, generator):
    """The official client sleeps out an all-digit Retry-After on GETs by itself; the watcher's
    listing must get the capped fleet pause instead, and the prediction's status still arrives."""
    replicate_server.throttle("list", "1000000000")
    made = generator(provider_max_pause_s=CAP_S, replicate_prediction_timeout_s=10.0, replicate_http_timeout_s=3.0)
    requested, ttls = record_pauses(made.other_calls)
    data = finishes(lambda: made.generate(request(unique_id("list-pause"))))
    assert data == replicate_server.output_png(replicate_server.creations[0]["id"])
    assert replicate_server.throttled["list"] == 1 and replicate_server.call_counts()["list"] >= 2
    assert requested == [1e9] and len(ttls) == 1 and 0 < ttls[0] <= CAP_S * 1000


def test_a_listing_503_with_a_huge_retry_after_is_retried_with_backoff(replicate_server, generator):
    """The official client would sleep out this Retry-After too (503 is one of its retried statuses)."""
    replicate_server.throttle("list", "1000000000", status=503)
    made = generator(replicate_prediction_timeout_s=10.0, replicate_http_timeout_s=3.0)
    data = finishes(lambda: made.generate(request(unique_id("list-503"))))
    assert data == replicate_server.output_png(replicate_server.creations[0]["id"])
    assert replicate_server.call_counts()["list"] >= 2


def full_creation_window(made) -> None:
    assert made.creations.try_acquire() == 0  # the only creation of the next 60 s is someone else's


def test_a_creation_waiting_for_a_slot_ends_promptly_when_cancelled(replicate_server, generator):
    made = generator(replicate_rate_limit=1, replicate_rate_window_s=60.0)
    full_creation_window(made)
    with pytest.raises(GenerationStopped, match="^cancelled$"):
        finishes(lambda: made.generate(request(unique_id("slot-cancel")), should_stop=stop_after(0.3)))
    assert replicate_server.call_counts()["create"] == 0  # nothing paid, nothing to cancel


def test_a_creation_waiting_for_a_slot_ends_at_its_deadline(replicate_server, generator):
    made = generator(replicate_rate_limit=1, replicate_rate_window_s=60.0, replicate_prediction_timeout_s=2.0)
    full_creation_window(made)
    with pytest.raises(ImageGenerationError, match="^rate limited") as failed:
        finishes(lambda: made.generate(request(unique_id("slot-deadline")), should_stop=lambda: None))
    assert not isinstance(failed.value, GenerationStopped)  # a failure record, not a stop
    assert replicate_server.call_counts()["create"] == 0


def test_the_upload_lock_wait_ends_when_cancelled(replicate_server, generator):
    """Another worker holds the job's upload lock for this image and never finishes."""
    made, job_id, image = generator(), unique_id("upload-cancel"), png_bytes((9, 9, 9))
    lock = f"framefleet:replicate:job:{job_id}:upload:{hashlib.sha256(image).hexdigest()}"
    made.board.r.set(lock, "1", ex=120)
    with pytest.raises(GenerationStopped, match="^cancelled$"):
        finishes(lambda: made.generate(request(job_id, input_images=[image]), should_stop=stop_after(0.3)))
    assert replicate_server.call_counts()["files"] == 0 and replicate_server.call_counts()["create"] == 0


def test_the_upload_lock_wait_ends_at_the_generation_deadline(replicate_server, generator):
    made, job_id, image = generator(replicate_prediction_timeout_s=1.0), unique_id("upload-late"), png_bytes((8, 8, 8))
    made.board.r.set(f"framefleet:replicate:job:{job_id}:upload:{hashlib.sha256(image).hexdigest()}", "1", ex=120)
    with pytest.raises(ImageGenerationError, match="did not finish in time"):
        finishes(lambda: made.generate(request(job_id, input_images=[image])))
    assert replicate_server.call_counts()["create"] == 0


def test_a_call_waiting_for_the_other_budget_is_bounded(replicate_server, generator):
    made = generator(replicate_http_timeout_s=1.0)
    made.other_calls.pause(60.0)  # a 429 on another worker paused every call for a minute
    with pytest.raises(ImageGenerationError, match="^rate limited"):
        finishes(lambda: made._fetch("pred-anything"))
    assert replicate_server.call_counts()["get"] == 0


# OpenAI --------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers, asked", [
    ({"Retry-After": "1000000000"}, 1e9),
    ({"Retry-After": "1e9"}, 1e9),
    ({"retry-after-ms": "1e12"}, 1e9),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "99999h"}, 99999 * 3600.0),
    ({"Retry-After": "inf"}, DEFAULT_PAUSE_S),
    ({"Retry-After": "nan"}, DEFAULT_PAUSE_S),
    ({"Retry-After": "-5"}, DEFAULT_PAUSE_S),
    ({"Retry-After": "garbage"}, DEFAULT_PAUSE_S),
    ({"retry-after-ms": "inf"}, DEFAULT_PAUSE_S),
    ({"retry-after-ms": "nan"}, DEFAULT_PAUSE_S),
    ({"retry-after-ms": "-5"}, DEFAULT_PAUSE_S),
    ({"retry-after-ms": "garbage"}, DEFAULT_PAUSE_S),
])
def test_an_openai_429_pauses_the_fleet_at_most_the_cap_then_answers(openai_server, caplog, headers, asked):
    openai_server.script = [("429", headers)]
    team = agents(provider_max_pause_s=CAP_S)
    requested, ttls = record_pauses(team.limiter)
    with caplog.at_level(logging.WARNING):
        answer = finishes(lambda: team.creative_director("a dog", "a dog", None))
    assert answer == "a dog refined"
    assert len(openai_server.requests) == 2 and team.usage["llm_calls"] == 1  # the 429, then the answer
    assert requested == [pytest.approx(asked)]
    assert len(ttls) == 1 and 0 < ttls[0] <= CAP_S * 1000
    assert len([w for w in ratelimit_warnings(caplog) if "ignoring" in w]) == (1 if asked == DEFAULT_PAUSE_S else 0)


def test_an_openai_pause_past_the_total_wait_falls_back_at_once(openai_server):
    """A capped pause is still waited for only within openai_rate_limit_max_wait_s."""
    openai_server.script = [("429", {"retry-after-ms": "1e12"})]
    team = agents(provider_max_pause_s=60.0, openai_rate_limit_max_wait_s=1.0)
    with pytest.raises(RateLimitDeadline, match="^rate limited"):
        finishes(lambda: team.creative_director("a dog", "a dog", None))
    assert 0 < team.limiter.client.pttl(team.limiter.pause_key) <= 60_000
