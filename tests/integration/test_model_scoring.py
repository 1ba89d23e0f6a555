"""The score task on a real gpu worker (solo pool, models loaded at process start), real Redis."""

from __future__ import annotations

import pytest
from framefleet.tasks.artifacts.store import open_store

from tests.helpers import put_reference, run_job, storyboard_request, unique_id
from tests.tiny_models import build_tiny_models, sources_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory, start_fleet):
    sources = build_tiny_models(tmp_path_factory.mktemp("tiny-models"))
    root = tmp_path_factory.mktemp("artifacts-models")
    start_fleet({"FRAMEFLEET_STORE_URL": f"file://{root}", **sources_env(sources),
                 "FRAMEFLEET_SCORE_WEIGHTS": '{"pickscore": 0.4, "clip_score": 0.2, "aesthetic": 0.2, '
                                             '"consistency": 0.2, "hps": 0.2}'})
    return open_store(f"file://{root}")


def test_storyboard_scored_by_the_models_with_consistency_and_hps(celery_app, store):
    job_id = unique_id("models")
    reference = put_reference(store, job_id)
    status, manifest = run_job(celery_app, "storyboard", storyboard_request(job_id, 1, reference_image=reference),
                               store)
    assert status.outcome == "succeeded"
    assert manifest["scorer"] == "models"
    assert manifest["config"]["score_weights"]["consistency"] == 0.2
    for frame in manifest["frames"]:
        assert frame["scorer"] == "models"
        assert all("below the threshold" in w for w in frame["warnings"])  # no metric failed
        for variation in frame["variations"]:
            scores = variation["scores"]
            assert all(scores[m] is not None for m in ("pickscore", "clip_score", "aesthetic", "hps", "overall"))
            assert len(scores["consistency"]) == len(frame["inputs"])
            assert all(-1.0 <= c <= 1.0 for c in scores["consistency"])
            consistency = 100 * sum(max(c, 0) for c in scores["consistency"]) / len(scores["consistency"])
            parts = {"pickscore": 0.4 * scores["pickscore"], "clip_score": 0.2 * scores["clip_score"],
                     "aesthetic": 0.2 * scores["aesthetic"], "consistency": 0.2 * consistency,
                     "hps": 0.2 * scores["hps"]}  # the gpu worker loaded HPS: the weights use it
            assert scores["overall"] == pytest.approx(sum(parts.values()) / 1.2, abs=1e-2)
            assert scores["contributions"] == pytest.approx({m: v / 1.2 for m, v in parts.items()}, abs=1e-2)
        assert frame["selected"]["overall"] == max(v["scores"]["overall"] for v in frame["variations"])
