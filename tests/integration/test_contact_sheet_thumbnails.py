"""Scoring stores each candidate's contact-sheet thumbnail; a thumbnail it cannot write costs the
sheet a full-size decode at finalize, never a score. Steps run in this process on the real test
Redis and a real store."""

from __future__ import annotations

import logging

import pytest

from framefleet.tasks.keys import ENHANCED, thumbnail_key
from framefleet.tasks.state import JobState
from tests.helpers import storyboard_request, unique_id

pytestmark = pytest.mark.integration


def test_a_thumbnail_that_cannot_be_written_costs_no_score(local_steps, monkeypatch, caplog):
    from framefleet.tasks import contact_sheet, pipeline

    store = local_steps
    job_id = pipeline.submit_job("storyboard", storyboard_request(unique_id("thumbs"), 1))["job_id"]
    frame = "clip_001_start"
    pipeline.enhance_prompt(job_id, frame)
    results = [pipeline.generate_variation(job_id, frame, ENHANCED, index) for index in range(1, 5)]
    made = []

    def thumbnail_unless_the_second(image, aspect_ratio):
        made.append(image.size)
        if len(made) == 2:
            raise OSError("disk full")
        return contact_sheet.candidate_thumbnail(image, aspect_ratio)

    monkeypatch.setattr(pipeline, "candidate_thumbnail", thumbnail_unless_the_second)
    with caplog.at_level(logging.WARNING):
        scored = pipeline.score_variations(results, job_id, frame)

    assert scored["error"] is None and all(v["scores"]["overall"] is not None for v in scored["variations"])
    written = [store.exists(thumbnail_key(r["key"])) for r in results]
    assert len(made) == 4 and written.count(False) == 1  # the pool's order decides which one failed
    assert "no contact-sheet thumbnail: disk full" in caplog.text
    pipeline.select_variation(scored, job_id, frame, ENHANCED)
    assert JobState(job_id).frame(frame).status == "succeeded"
