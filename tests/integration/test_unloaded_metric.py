"""A job may weigh a metric this worker's scorer does not compute (HPS is loaded only where the
fleet's weights use it): the frame is scored by the others, re-weighted, with a warning naming it.
Steps run in this process on the real test Redis and a real store."""

from __future__ import annotations

import pytest
from framefleet.scoring import MetricScores, overall_score
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.states import NoteKind, PromptSource

from tests.helpers import create_here, storyboard_request, unique_id

pytestmark = pytest.mark.integration
WEIGHTS = {"pickscore": 0.5, "clip_score": 0.25, "aesthetic": 0.25, "consistency": 0.5, "hps": 0.5}


def test_a_weighted_metric_the_worker_does_not_compute_is_a_warning_and_re_weighted(local_steps):
    from framefleet.tasks import entry

    frame = "clip_001_start"
    job_id = create_here("storyboard", storyboard_request(unique_id("hps-unloaded"), 1,
                                                          overrides={"score_weights": WEIGHTS}))
    entry.enhance_prompt(job_id, frame)
    results = [entry.generate_variation(job_id, frame, PromptSource.ENHANCED, index) for index in range(1, 5)]
    scored = entry.score_variations(results, job_id, frame)
    note = ("hps failed (not computed by the heuristic scorer on this worker); overall re-weighted over the "
            "other metrics")
    assert scored["notes"] == [note]
    for variation in scored["variations"]:
        scores = variation["scores"]
        assert scores["hps"] is None and "hps" not in scores["contributions"]
        metrics = MetricScores(**{m: scores[m] for m in ("pickscore", "clip_score", "aesthetic")})
        assert scores["overall"] == pytest.approx(overall_score(metrics, WEIGHTS), abs=1e-3)  # no inputs here
    entry.select_variation(scored, job_id, frame, PromptSource.ENHANCED)
    record = Job(job_id).frames.get(frame)
    assert record.status == "succeeded" and record.has_note(NoteKind.METRIC_FAILED) and note in record.warnings
