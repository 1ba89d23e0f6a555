"""The evaluation's pure parts: prompt sets, the stand-in image embedding, bootstrap intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from framefleet.scoring.similarity import colour_layout_embeddings, cosine
from framefleet.tasks.job.requests import RequestError
from framefleet.workers.evaluation.metrics import mean_ci
from framefleet.workers.evaluation.prompts import load_prompt_set, shipped_storyboards
from PIL import Image


def test_plain_text_prompts_become_one_scene_reference_jobs(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\na red kite\n\n  a green door  \n")
    items = load_prompt_set(path)
    assert [(i.name, i.kind, i.request["scene_prompts"]) for i in items] == [
        ("prompts-001", "references", ["a red kite"]), ("prompts-002", "references", ["a green door"])]


def test_a_bad_storyboard_line_is_refused_with_its_line_and_field(tmp_path):
    path = tmp_path / "boards.jsonl"
    path.write_text(json.dumps({"clips": [{"start_prompt": "a", "end_prompt": "b"}]}) + "\n"
                    + json.dumps({"clips": [{"start_prompt": "a"}]}) + "\n")
    with pytest.raises(RequestError, match=r"boards.jsonl item 2: clips.0.end_prompt"):
        load_prompt_set(path)


def test_the_shipped_storyboards_are_valid_and_varied():
    items = load_prompt_set(shipped_storyboards())
    assert len(items) == 12 and len({i.name for i in items}) == 12
    assert all(2 <= len(i.request["clips"]) <= 3 for i in items)
    assert len({i.request["aspect_ratio"] for i in items}) > 3


def test_colour_layout_embedding_compares_layout_and_palette():
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))).convert("RGB")
    inverted = Image.fromarray(255 - np.asarray(gradient))
    flat = Image.new("RGB", (64, 48), (90, 90, 90))
    embedded = colour_layout_embeddings([gradient, gradient, inverted, flat])
    assert cosine(embedded[0], embedded[1]) == pytest.approx(1.0)
    assert cosine(embedded[0], embedded[2]) == pytest.approx(-1.0)
    assert cosine(embedded[0], embedded[3]) == 0.0  # a flat image has no layout to share


def test_bootstrap_interval_contains_the_mean_and_skips_missing_values():
    stat = mean_ci([1.0, None, 2.0, 4.0, 8.0])
    assert stat["n"] == 4 and stat["mean"] == 3.75
    assert stat["ci95"][0] <= stat["mean"] <= stat["ci95"][1] and stat["ci95"][0] < stat["ci95"][1]
    assert mean_ci([None]) == {"n": 0, "mean": None, "ci95": None}


def test_the_selection_arms_change_one_thing_at_a_time():
    from framefleet.tasks.job.requests import parse_request
    from framefleet.workers.evaluation import ARMS

    scores_only, continuity, judge = ARMS["scores-only"], ARMS["continuity"], ARMS["judge"]
    assert scores_only["score_weights"] == {**continuity["score_weights"], "consistency": 0}  # + continuity
    assert continuity["score_weights"]["consistency"] > 0 and scores_only["judge"] == continuity["judge"] == "off"
    assert judge == {**continuity, "judge": "vlm"}  # + the judge
    for overrides in (scores_only, continuity, judge):  # each a valid request's overrides
        load = {"clips": [{"start_prompt": "a", "end_prompt": "b"}], "overrides": overrides}
        assert parse_request("storyboard", load).overrides.judge == overrides["judge"]
