"""OpenAI's request budget below the fleet's concurrency: enhancement queues, never falls back."""

from __future__ import annotations

import pytest
from framefleet.tasks.artifacts.store import open_store

from tests.fakes.openai_api import FakeOpenAI
from tests.helpers import run_job, storyboard_request, unique_id

pytestmark = pytest.mark.integration

REQUESTS_PER_WINDOW, WINDOW_S = 3, 1.0


def test_every_frame_is_enhanced_under_a_request_limit_below_the_concurrency(celery_app, start_fleet,
                                                                                tmp_path_factory):
    """8 llm threads want 16 requests at once; the account allows 3 a second. The fleet limiter is
    set above the account (as when another fleet shares the key), so 429s happen: they are waited
    out (x-ratelimit-reset-requests), counted, and no frame falls back."""
    root = tmp_path_factory.mktemp("artifacts-openai-budget")
    with FakeOpenAI(requests_limit=REQUESTS_PER_WINDOW, window_s=WINDOW_S) as openai_api:
        start_fleet({
            "FRAMEFLEET_STORE_URL": f"file://{root}", "FRAMEFLEET_IMAGE_PROVIDER": "offline",
            "FRAMEFLEET_SCORER": "heuristic", "OPENAI_API_KEY": "sk-budget", "OPENAI_BASE_URL": openai_api.base_url,
            "FRAMEFLEET_OPENAI_REQUESTS_PER_MINUTE": str(REQUESTS_PER_WINDOW + 2),
            "FRAMEFLEET_OPENAI_RATE_WINDOW_S": str(WINDOW_S),
        })
        status, manifest = run_job(celery_app, "storyboard", storyboard_request(unique_id("openai-budget"), 2),
                                   open_store(f"file://{root}"), timeout_s=180)
    assert status.outcome == "succeeded"
    assert len(manifest["frames"]) == 4
    for frame in manifest["frames"]:
        assert frame["enhancement"]["fallback"] is False and frame["enhancement"]["iterations"] == 2
        assert len(frame["variations"]) == 4
    assert len(openai_api.requests) == 16 and openai_api.throttled >= 1
    total = manifest["cost"]["total"]
    assert total["llm_calls"] == 16 and total["rate_limit_waits"] >= 1 and total["rate_limit_wait_ms"] > 0
