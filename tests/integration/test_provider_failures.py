"""Chord headers return failure records: failing variations never stop a frame or a job."""

from __future__ import annotations

import pytest
from framefleet.tasks.artifacts.store import open_store

from tests.helpers import run_job, storyboard_request, unique_id

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def failing_fleet(tmp_path_factory, start_fleet):
    """Workers whose offline image provider fails every call: the worst provider day."""
    root = tmp_path_factory.mktemp("artifacts-failing")
    start_fleet({"FRAMEFLEET_STORE_URL": f"file://{root}", "FRAMEFLEET_OFFLINE_IMAGE_FAILURE_RATE": "1.0"})
    return open_store(f"file://{root}")


def test_every_generation_failing_ends_with_a_manifest_listing_failed_clips(celery_app, failing_fleet):
    job_id = unique_id("allfail")
    status, manifest = run_job(celery_app, "storyboard", storyboard_request(job_id, 2), failing_fleet)
    assert status.state == "done" and status.outcome == "failed"
    assert manifest["status"] == "failed"
    assert manifest["failed_clips"] == [1, 2]
    start, end = manifest["frames"][0], manifest["frames"][1]
    assert start["status"] == "failed" and start["selected"] is None
    # 4 enhanced-prompt variations, each retried once, then the single original-prompt image.
    assert [v["prompt_source"] for v in start["variations"]] == ["enhanced"] * 4 + ["original"]
    assert all(v["error"] and v["key"] is None for v in start["variations"])
    failed = [f"variation {n} failed: simulated provider failure (variation {n})" for n in (1, 2, 3, 4)]
    assert start["fallbacks"] == [*failed, "generation failed: one image with the original prompt",
                                  failed[0], "generation failed: frame failed"]
    assert end["status"] == "skipped"  # nothing to end once the clip's start frame failed
