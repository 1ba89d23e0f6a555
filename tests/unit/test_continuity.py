"""Continuity counts: consistency with the frame's input images enters the overall score by default,
so a candidate far less consistent than its siblings does not win on looks alone. The case is built
with the offline image provider: three candidates generated from the frame's inputs (the reference
and the previous frame), one from another scene's image, which ignores them."""

from __future__ import annotations

import io

import pytest
from framefleet.config.settings import ScoreWeights
from framefleet.scoring import contributions, create_scorer, overall_score
from framefleet.tasks.job.records import Scores, VariationRecord
from framefleet.tasks.providers.base import ImageRequest
from framefleet.tasks.providers.offline_images import OfflineImageGenerator
from framefleet.tasks.steps.select import best_variation
from PIL import Image, ImageDraw

PROMPTS = ["The keeper lights the great lamp", "The keeper opens the lantern room door",
           "The beam sweeps the stormy sea", "The keeper rests by the lamp at night",
           "Rain lashes the lighthouse windows", "The keeper writes in the logbook"]
SEEDS_WEIGHTS = ScoreWeights(consistency=0).model_dump()  # the seeds' selection: looks only


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def another_scene() -> bytes:
    """A vivid striped image: what the heuristic's sharpness, contrast and colourfulness love."""
    image = Image.new("RGB", (512, 288), (250, 30, 30))
    draw = ImageDraw.Draw(image)
    for x in range(0, 512, 32):
        draw.rectangle((x, 0, x + 15, 288), fill=(20, 40, 250) if (x // 32) % 2 else (250, 220, 0))
    return png(image)


@pytest.fixture(scope="module")
def inputs() -> list[bytes]:
    generator = OfflineImageGenerator()
    reference = generator.generate(ImageRequest(prompt="reference: grey-bearded keeper in a yellow coat",
                                                aspect_ratio="16:9", variation=1))
    previous = generator.generate(ImageRequest(prompt="the keeper climbs the spiral stairs at dusk",
                                               aspect_ratio="16:9", variation=1, input_images=[reference]))
    return [reference, previous]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_best_looking_candidate_that_breaks_continuity_loses_to_a_consistent_sibling(inputs, prompt):
    generator = OfflineImageGenerator()
    made = [generator.generate(ImageRequest(prompt=prompt, aspect_ratio="16:9", variation=i, input_images=inputs))
            for i in (1, 2, 3)]
    made.append(generator.generate(ImageRequest(prompt=prompt, aspect_ratio="16:9", variation=4,
                                                input_images=[another_scene()])))
    metrics = create_scorer("heuristic").score(prompt, [decoded(d) for d in made], [decoded(d) for d in inputs])
    rogue = metrics[3]

    looks = [overall_score(m, SEEDS_WEIGHTS) for m in metrics]
    assert looks[3] == max(looks)  # the candidate that ignores its inputs is the best-looking one
    continuity = [contributions(m, {"consistency": 1.0}).get("consistency", 0.0) for m in metrics]
    assert continuity[3] == min(continuity) and continuity[3] < max(continuity) - 20  # and the least consistent

    default = ScoreWeights().model_dump()
    variations = [VariationRecord(index=i, key=f"v{i}.png", scores=Scores(
        overall=overall_score(m, default), pickscore=m.pickscore, contributions=contributions(m, default)))
        for i, m in enumerate(metrics, start=1)]
    chosen = best_variation(variations, None, [])
    assert chosen.index != 4 and variations[3].rank > 1  # it loses, to a consistent sibling
    # The manifest's contributions say why: they add up to the overall, and consistency is the difference.
    for variation in variations:
        assert sum(variation.scores.contributions.values()) == pytest.approx(variation.scores.overall, abs=0.01)
    assert chosen.scores.contributions["consistency"] > variations[3].scores.contributions["consistency"]
    assert rogue.consistency is not None and len(rogue.consistency) == 2


def test_the_heuristic_scorer_measures_consistency_with_the_colour_layout(inputs):
    reference, previous = (decoded(d) for d in inputs)
    scores = create_scorer("heuristic").score("x", [reference, previous], [reference, previous])
    assert scores[0].consistency[0] == pytest.approx(1.0) and scores[1].consistency[1] == pytest.approx(1.0)
    assert create_scorer("heuristic").score("x", [reference])[0].consistency is None  # no inputs: not measured


def test_consistency_counts_by_default_and_alone_cannot_rank():
    from pydantic import ValidationError

    weights = ScoreWeights()
    assert weights.consistency == 0.5 and (weights.pickscore, weights.clip_score, weights.aesthetic) == (0.5, .25, .25)
    assert weights.hps == 0
    with pytest.raises(ValidationError, match="at least one of pickscore"):
        ScoreWeights(pickscore=0, clip_score=0, aesthetic=0)  # consistency only: a first frame has no inputs
