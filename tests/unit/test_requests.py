import json

import pytest

from framefleet.config.settings import Settings
from framefleet.tasks.requests import JobConfig, JobOverrides, RequestError, parse_request

CLIP = {"start_prompt": "a", "end_prompt": "b"}


@pytest.mark.parametrize("body, field", [
    ({"clips": []}, "clips"),
    ({"clips": [{"start_prompt": "  ", "end_prompt": "b"}]}, "clips.0.start_prompt"),
    ({"clips": [{"start_prompt": 3, "end_prompt": "b"}]}, "clips.0.start_prompt"),
    ({"clips": [{"start_prompt": "a"}]}, "clips.0.end_prompt"),
    ({"clips": [CLIP], "job_id": "../../etc"}, "job_id"),
    ({"clips": [CLIP], "job_id": "x" * 65}, "job_id"),
    ({"clips": [CLIP], "aspect_ratio": "5:1"}, "aspect_ratio"),
    ({"clips": [CLIP], "colour": "red"}, "colour"),
    ({"clips": [CLIP], "reference_image": "/etc/passwd"}, "reference_image"),
    ({"clips": [CLIP], "reference_image": "jobs/../../x.png"}, "reference_image"),
    ({"clips": [CLIP], "overrides": {"num_variations": 0}}, "overrides.num_variations"),
    ({"clips": [CLIP], "overrides": {"score_weights": {"pickscore": 0, "clip_score": 0, "aesthetic": 0}}},
     "overrides.score_weights"),
    ({"clips": [CLIP], "overrides": {"broker_url": "redis://elsewhere"}}, "overrides.broker_url"),
])
def test_storyboard_errors_name_the_field(body, field):
    with pytest.raises(RequestError) as error:
        parse_request("storyboard", body)
    assert str(error.value).startswith(field + ":") or f"{field}:" in str(error.value)


def test_limits_come_from_settings():
    settings = Settings(max_frames=4, max_prompt_chars=10)
    with pytest.raises(RequestError, match="clips: the job would have 6 frames, the limit is 4"):
        parse_request("storyboard", {"clips": [CLIP] * 3}, settings)
    with pytest.raises(RequestError, match=r"clips\.0\.start_prompt: .*11 characters, the limit is 10"):
        parse_request("storyboard", {"clips": [{"start_prompt": "x" * 11, "end_prompt": "b"}]}, settings)


def test_reference_request_note_counts():
    with pytest.raises(RequestError, match="continuity_notes"):
        parse_request("references", {"scene_prompts": ["a"], "continuity_notes": ["1", "2"]})
    with pytest.raises(RequestError, match="transition_notes"):
        parse_request("references", {"scene_prompts": ["a", "b"], "transition_notes": ["1", "2"]})


def test_malformed_json_and_non_objects():
    with pytest.raises(RequestError, match="request"):
        parse_request("storyboard", "{not json")
    with pytest.raises(RequestError, match="request: expected a JSON object"):
        parse_request("storyboard", ["clips"])
    with pytest.raises(RequestError, match="kind"):
        parse_request("video", {})


def test_json_text_and_defaults():
    request = parse_request("storyboard", json.dumps({"clips": [CLIP]}))
    assert request.aspect_ratio == "16:9" and len(request.job_id) == 16 and request.reference_image is None


def test_overrides_merge_over_settings():
    settings = Settings(num_variations=4, keep_traces=False, quality_threshold=30)
    config = JobConfig.resolve(settings, JobOverrides(num_variations=2, keep_traces=True))
    assert (config.num_variations, config.keep_traces, config.quality_threshold) == (2, True, 30)
