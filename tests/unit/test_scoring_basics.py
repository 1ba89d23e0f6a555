import subprocess
import sys

import pytest
from framefleet.scoring import MetricScores, Ranked, create_scorer, overall_score, rank_images_by_quality
from framefleet.scoring.heuristic import image_statistics
from PIL import Image, ImageDraw

WEIGHTS = {"pickscore": 0.5, "clip_score": 0.25, "aesthetic": 0.25}


def test_scoring_imports_without_celery_redis_or_boto3():
    code = "import scoring, sys; bad = {'celery', 'redis', 'boto3', 'kombu'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_overall_is_the_weighted_mean():
    assert overall_score(MetricScores(pickscore=80, clip_score=40, aesthetic=60), WEIGHTS) == 65.0


def test_a_failed_metric_is_reweighted_across_the_others():
    assert overall_score(MetricScores(pickscore=80, clip_score=None, aesthetic=60), WEIGHTS) == pytest.approx(
        (0.5 * 80 + 0.25 * 60) / 0.75, abs=1e-3)
    assert overall_score(MetricScores(), WEIGHTS) is None


def test_ranking_by_overall_then_pickscore_then_index():
    ranked = rank_images_by_quality([
        Ranked(index=1, overall=50, pickscore=40), Ranked(index=2, overall=70, pickscore=10),
        Ranked(index=3, overall=50, pickscore=60), Ranked(index=4, overall=50, pickscore=60),
    ])
    assert [r.index for r in ranked] == [2, 3, 4, 1]


def test_heuristic_prefers_a_sharp_colourful_image_over_a_flat_grey_one():
    flat = Image.new("RGB", (96, 64), (128, 128, 128))
    busy = Image.new("RGB", (96, 64), (20, 60, 200))
    draw = ImageDraw.Draw(busy)
    for x in range(0, 96, 8):
        draw.rectangle((x, 0, x + 3, 64), fill=(250, 200, 30))
    scorer = create_scorer("heuristic")
    flat_scores, busy_scores = scorer.score("a prompt", [flat, busy])
    assert flat_scores.pickscore < busy_scores.pickscore
    assert image_statistics(flat)["sharpness"] < 0.01 and image_statistics(busy)["sharpness"] > 50
    for scores in (flat_scores, busy_scores):
        for metric in ("pickscore", "clip_score", "aesthetic"):
            assert 0 <= getattr(scores, metric) <= 100
    assert scorer.score("a prompt", [busy]) == [busy_scores]


def test_unknown_scorer_names_the_field():
    with pytest.raises(ValueError, match="scorer: unknown scorer 'nope'"):
        create_scorer("nope")
