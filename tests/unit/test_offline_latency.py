import statistics

import pytest
from framefleet.config.settings import Settings
from framefleet.tasks.providers import offline_image_latency, prompt_agents
from framefleet.tasks.providers.base import GenerationStopped, ImageRequest
from framefleet.tasks.providers.offline_images import OfflineImageGenerator
from framefleet.tasks.providers.offline_latency import LatencyProfile, wait


def request(**kwargs) -> ImageRequest:
    return ImageRequest(**{"prompt": "a lighthouse", "aspect_ratio": "1:1", "variation": 1,
                           "job_id": "job-a", "frame": "clip_001_start", **kwargs})


def test_draws_are_deterministic_per_key():
    profile = LatencyProfile(median_s=1.0, sigma=0.8, cold_start_rate=0.3, cold_start_s=5.0)
    keys = [f"image/job-{j}/f/{v}/0" for j in range(20) for v in range(4)]
    assert [profile.draw(k) for k in keys] == [LatencyProfile(**profile.model_dump()).draw(k) for k in keys]
    assert len({profile.draw(k) for k in keys}) == len(keys)


def test_image_draws_key_on_job_frame_variation_and_attempt():
    generator = OfflineImageGenerator(LatencyProfile(median_s=1.0, sigma=0.5))
    base = generator.latency_s(request())
    assert generator.latency_s(request(prompt="another prompt")) == base
    for change in ({"job_id": "job-b"}, {"frame": "clip_001_end"}, {"variation": 2}, {"attempt": 1}):
        assert generator.latency_s(request(**change)) != base


def test_fixed_latency_without_spread():
    assert OfflineImageGenerator(0.25).latency_s(request()) == 0.25
    assert {LatencyProfile(median_s=0.25).draw(str(k)) for k in range(50)} == {0.25}


def test_lognormal_median_is_the_configured_latency():
    profile = LatencyProfile(median_s=2.0, sigma=1.0)
    draws = [profile.draw(f"k{k}") for k in range(4000)]
    assert statistics.median(draws) == pytest.approx(2.0, rel=0.06)
    assert max(draws) > 4 * 2.0 and min(draws) < 2.0 / 4  # a real spread, both ways


def test_cold_start_rate_is_honoured():
    profile = LatencyProfile(median_s=0.0, cold_start_rate=0.1, cold_start_s=60.0)
    draws = [profile.draw(f"image/job/frame/{k}/0") for k in range(5000)]
    assert set(draws) == {0.0, 60.0}
    assert 400 <= draws.count(60.0) <= 600  # 500 expected; binomial sd ≈ 21


def test_settings_build_the_profiles():
    settings = Settings(offline_image_latency_s=1.5, offline_image_latency_sigma=0.4,
                        offline_image_cold_start_rate=0.02, offline_image_cold_start_s=30)
    assert offline_image_latency(settings) == LatencyProfile(median_s=1.5, sigma=0.4, cold_start_rate=0.02,
                                                             cold_start_s=30)
    with pytest.raises(ValueError, match="offline_llm_cold_start_rate"):
        Settings(offline_llm_cold_start_rate=1.5)


def test_llm_calls_draw_by_context_and_call_number():
    settings = Settings(llm_provider="offline", offline_llm_latency_s=0.001, offline_llm_latency_sigma=1.0)
    first, again = (prompt_agents(settings, "job-a/clip_001_start") for _ in range(2))
    sequence = [again.next_latency_s() for _ in range(3)]
    assert len(set(sequence)) == 3  # each call draws anew
    first.prompt_engineer("a lighthouse")  # the real calls take draws 0 and 1 of the same sequence
    first.creative_director("a lighthouse", "a lighthouse", None)
    assert first.next_latency_s() == sequence[2]
    assert prompt_agents(settings, "job-a/clip_001_end").next_latency_s() != sequence[0]


def test_should_stop_interrupts_the_wait():
    checks = []

    def should_stop():  # a reason on the third poll, long before the drawn 60 s are over
        checks.append(1)
        return "straggler cut after 0.2 s" if len(checks) == 3 else None

    with pytest.raises(GenerationStopped, match="straggler cut after 0.2 s"):
        OfflineImageGenerator(60.0).generate(request(), should_stop=should_stop)
    assert len(checks) == 3


def test_wait_polls_until_the_end_without_a_stop_request():
    checks = []
    wait(0.05, lambda: checks.append(1))
    assert len(checks) >= 1
