"""Several frames' rounds in one pass (``score_groups``) get the scores each gets alone (``score``).

The heuristic scorer's are identical. The model scorer's cannot be bit-identical on every machine:
a batched matmul's result for one row depends on where that row falls in the kernel's blocks (on
this CPU an image embedding moves by up to about 1e-7 with the batch around it), so they are
compared at the precision scores are reported and ranked at, and the rankings must be the same.
"""

from __future__ import annotations

import pytest
from framefleet.scoring import ScoreGroup, create_scorer, overall_score
from PIL import Image, ImageDraw

from tests.tiny_models import build_tiny_models

WEIGHTS = {"pickscore": 0.5, "clip_score": 0.25, "aesthetic": 0.25, "consistency": 0.5, "hps": 0.25}
POINTS = 1e-3  # on the 0-100 metrics, which are stored at 4 decimals
COSINE = 1e-5  # on cosines and raw logits


def image(seed: int) -> Image.Image:
    picture = Image.new("RGB", (64, 40), (37 * seed % 256, 120, 220 - 23 * seed % 200))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((seed % 30, 4, 20 + seed % 40, 30), fill=(250, 250 - 11 * seed % 250, 0))
    draw.line((0, seed % 40, 63, 39 - seed % 40), fill=(10, 10, 10), width=2)
    return picture


def frames(count: int) -> list[ScoreGroup]:
    """Rounds of 4 candidates (one of 3), each with its own prompt, with 0, 1 or 2 input images;
    two frames share a prompt."""
    groups = []
    for k in range(count):
        candidates = [image(10 * k + i) for i in range(3 if k == 2 else 4)]
        inputs = [image(500 + 10 * k + i) for i in range(k % 3)]
        prompt = "a lighthouse at dusk" if k in (1, 4) else f"frame {k}: a keeper in a yellow coat" + " on a cliff" * k
        groups.append(ScoreGroup(prompt, candidates, inputs or None))
    return groups


def test_heuristic_scores_of_a_pass_are_identical_to_each_frame_alone():
    scorer = create_scorer("heuristic")
    groups = frames(6)
    assert scorer.score_groups(groups) == [scorer.score(*group) for group in groups]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return create_scorer("models", sources=build_tiny_models(tmp_path_factory.mktemp("tiny-models")), device="cpu",
                         with_hps=True)


def test_model_scores_of_a_pass_match_each_frame_alone(scorer):
    groups = frames(16)  # 63 candidates, 15 prompts, 15 input images: every tower batched
    together = scorer.score_groups(groups)
    assert [len(scores) for scores in together] == [len(group.images) for group in groups]
    for group, batched in zip(groups, together, strict=True):
        alone = scorer.score(*group)
        for joint, single in zip(batched, alone, strict=True):
            assert not joint.errors and not single.errors
            for metric in ("pickscore", "clip_score", "aesthetic", "hps"):
                assert getattr(joint, metric) == pytest.approx(getattr(single, metric), abs=POINTS), metric
            for raw in ("pickscore_raw", "hps_raw"):
                assert getattr(joint, raw) == pytest.approx(getattr(single, raw), abs=COSINE), raw
            if group.input_images:
                assert joint.consistency == pytest.approx(single.consistency, abs=COSINE)
            else:
                assert joint.consistency is None and single.consistency is None
            assert overall_score(joint, WEIGHTS) == pytest.approx(overall_score(single, WEIGHTS), abs=POINTS)

        def ranking(scores):
            return sorted(range(len(scores)), key=lambda i: -overall_score(scores[i], WEIGHTS))

        assert ranking(batched) == ranking(alone)


def test_each_frame_is_scored_against_its_own_prompt_and_inputs(scorer):
    """The same candidates in two frames of one pass: their scores differ exactly as the frames'
    prompts and input images do, as they would alone."""
    candidates = [image(i) for i in range(4)]
    first = ScoreGroup("a red kite over the sea", candidates, [image(7)])
    second = ScoreGroup("a cat asleep on a windowsill at noon", candidates, [image(8), image(9)])
    batched_first, batched_second = scorer.score_groups([first, second])
    assert [s.clip_score for s in batched_first] == pytest.approx([s.clip_score for s in scorer.score(*first)],
                                                                  abs=POINTS)
    assert [s.clip_score for s in batched_second] == pytest.approx([s.clip_score for s in scorer.score(*second)],
                                                                   abs=POINTS)
    assert [len(s.consistency) for s in batched_first + batched_second] == [1] * 4 + [2] * 4
    assert batched_first[0].pickscore_raw != pytest.approx(batched_second[0].pickscore_raw, abs=COSINE)
    assert [s.aesthetic for s in batched_first] == pytest.approx([s.aesthetic for s in batched_second], abs=POINTS)
