"""Scoring stores each candidate's contact-sheet thumbnail and names it in the candidate's record;
a thumbnail it cannot write costs the sheet a full-size decode at finalize, never a score. Steps
run in this process on the real test Redis and a real store."""

from __future__ import annotations

import logging

import pytest
from framefleet.tasks.artifacts.keys import thumbnail_key
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.states import PromptSource

from tests.helpers import create_here, storyboard_request, unique_id

ENHANCED = PromptSource.ENHANCED

pytestmark = pytest.mark.integration


def test_a_thumbnail_that_cannot_be_written_costs_no_score(local_steps, monkeypatch, caplog):
    from framefleet.tasks import entry

    store = local_steps
    job_id = create_here("storyboard", storyboard_request(unique_id("thumbs"), 1))
    frame = "clip_001_start"
    entry.enhance_prompt(job_id, frame)
    results = [entry.generate_variation(job_id, frame, ENHANCED, index) for index in range(1, 5)]
    unwritable = thumbnail_key(results[1]["key"])
    put = store.put

    def put_but_the_second_thumbnail(key, data, content_type="application/octet-stream"):
        if key == unwritable:
            raise OSError("disk full")
        put(key, data, content_type)

    monkeypatch.setattr(store, "put", put_but_the_second_thumbnail)
    with caplog.at_level(logging.WARNING):
        scored = entry.score_variations(results, job_id, frame)

    assert scored["error"] is None and all(v["scores"]["overall"] is not None for v in scored["variations"])
    named = {v["key"]: v["thumbnail_key"] for v in scored["variations"]}
    assert named == {r["key"]: (None if r is results[1] else thumbnail_key(r["key"])) for r in results}
    assert all(store.exists(key) for key in named.values() if key) and not store.exists(unwritable)
    assert f"no contact-sheet thumbnail of {results[1]['key']}: disk full" in caplog.text
    entry.select_variation(scored, job_id, frame, ENHANCED)
    record = Job(job_id).frames.get(frame)
    assert record.status == "succeeded" and [v.thumbnail_key for v in record.variations] == list(named.values())
