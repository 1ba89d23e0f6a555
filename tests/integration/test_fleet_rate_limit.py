"""Two image worker processes share one Redis-backed limit on prediction creations."""

from __future__ import annotations

import pytest
from framefleet.tasks.artifacts.store import open_store

from tests.conftest import TEST_SHAPES
from tests.fakes.replicate_api import FakeReplicate
from tests.helpers import run_job, storyboard_request, unique_id

pytestmark = pytest.mark.integration

LIMIT, WINDOW_S = 3, 2.0


def test_creations_per_window_stay_under_the_fleet_limit(celery_app, start_fleet, tmp_path_factory, monkeypatch):
    monkeypatch.setitem(TEST_SHAPES, "images", ("threads", 4))
    root = tmp_path_factory.mktemp("artifacts-limit")
    with FakeReplicate() as replicate_api:
        fleet = start_fleet({
            "FRAMEFLEET_STORE_URL": f"file://{root}", "FRAMEFLEET_LLM_PROVIDER": "offline",
            "REPLICATE_API_TOKEN": "r8-test", "REPLICATE_BASE_URL": replicate_api.base_url,
            "FRAMEFLEET_REPLICATE_POLL_INTERVAL_S": "0.05", "FRAMEFLEET_SCORER": "heuristic",
            "FRAMEFLEET_REPLICATE_RATE_LIMIT": str(LIMIT), "FRAMEFLEET_REPLICATE_RATE_WINDOW_S": str(WINDOW_S),
        })
        fleet.start_worker("images", suffix="b")
        fleet.wait_ready([fleet.node_name("images", "b")])
        job_id = unique_id("limit")
        status, _ = run_job(celery_app, "storyboard", storyboard_request(job_id, 1, overrides={"num_variations": 8}),
                            open_store(f"file://{root}"), timeout_s=180)
        times = sorted(c["time"] for c in replicate_api.creations)
    assert status.outcome == "succeeded" and len(times) == 16
    for start in times:
        in_window = [t for t in times if start <= t < start + WINDOW_S - 0.5]  # transit: slot taken → creation seen
        assert len(in_window) <= LIMIT
    assert times[-1] - times[0] >= (16 / LIMIT - 1) * WINDOW_S * 0.9
    for log in ("images.log", "imagesb.log"):
        assert "framefleet.images.generate_variation" in (fleet.log_dir / log).read_text()
