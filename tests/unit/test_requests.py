import json

import pytest
from framefleet.config.settings import Settings
from framefleet.tasks.job.requests import JobConfig, JobOverrides, RequestError, parse_request
from pydantic import ValidationError

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


# Issue 21: bounded text fields, the woven prompt, and the pre-check before validation ---------
from framefleet.tasks.job.plan import weave_scene_prompt  # noqa: E402
from framefleet.tasks.job.requests import MAX_GUIDELINES, MAX_MARKERS, REQUEST_MODELS, precheck_request  # noqa: E402

SCENES = {"scene_prompts": ["the keeper walks the cliff path", "the keeper opens the door", "the lamp is lit"]}


def refusal(kind, body, settings=None) -> str:
    with pytest.raises(RequestError) as error:
        parse_request(kind, body, settings)
    return str(error.value)


@pytest.mark.parametrize("extra, field", [
    ({"consistency_markers": {"character": "x" * 1001}},
     "consistency_markers.character: String should have at most 1000"),
    ({"consistency_markers": {"k" * 65: "keeper"}}, "consistency_markers.kkkk"),
    ({"consistency_markers": {"  ": "keeper"}}, "consistency_markers.  .[key]: String should have at least 1"),
    ({"consistency_markers": {f"m{n}": "x" for n in range(MAX_MARKERS + 1)}},
     f"consistency_markers: {MAX_MARKERS + 1} markers, the limit is {MAX_MARKERS}"),
    ({"consistency_guidelines": ["same coat", "g" * 1001]},
     "consistency_guidelines.1: String should have at most 1000"),
    ({"consistency_guidelines": ["g"] * (MAX_GUIDELINES + 1)},
     f"consistency_guidelines: {MAX_GUIDELINES + 1} guidelines, the limit is {MAX_GUIDELINES}"),
    ({"continuity_notes": ["", "n" * 2001]}, "continuity_notes.1: String should have at most 2000"),
    ({"transition_notes": ["t" * 2001]}, "transition_notes.0: String should have at most 2000"),
    ({"continuity_notes": [""] * 65}, "continuity_notes: 65 notes, a job has at most 64 scenes"),
    ({"transition_notes": [""] * 65}, "transition_notes: 65 notes, a job has at most 64 scenes"),
])
def test_every_reference_text_field_and_collection_is_bounded(extra, field):
    """Each one names its field, whether the request comes as an object or as JSON text."""
    body = {**SCENES, **extra}
    assert refusal("references", body).startswith(field)
    assert refusal("references", json.dumps(body)).startswith(field)


def test_the_fixed_limits_are_in_the_published_schema():
    properties = REQUEST_MODELS["references"].model_json_schema(mode="validation")["properties"]
    markers = properties["consistency_markers"]
    assert markers["maxProperties"] == MAX_MARKERS
    assert markers["propertyNames"] == {"minLength": 1, "maxLength": 64}
    assert markers["additionalProperties"]["maxLength"] == 1000
    assert properties["consistency_guidelines"]["maxItems"] == MAX_GUIDELINES
    assert properties["consistency_guidelines"]["items"]["maxLength"] == 1000
    assert properties["continuity_notes"]["items"]["maxLength"] == 2000
    assert properties["transition_notes"]["items"]["maxLength"] == 2000


def test_the_woven_scene_prompt_is_checked_against_the_prompt_limit():
    settings = Settings(max_prompt_chars=120)
    body = {**SCENES, "consistency_markers": {"character": "grey-bearded keeper in a yellow coat"},
            "continuity_notes": ["", "rain " * 12], "transition_notes": ["cut on the lantern swing"]}
    woven = [weave_scene_prompt(parse_request("references", body), n) for n in range(3)]  # default limit: fine
    assert [len(w) > 120 for w in woven] == [False, True, False]
    message = refusal("references", body, settings)
    assert message == (f"scene_prompts.1: the prompt woven with consistency_markers, continuity_notes.1, "
                       f"transition_notes.0 has {len(woven[1])} characters, the limit is 120")
    assert parse_request("references", body, Settings(max_prompt_chars=len(woven[1])))  # exactly at the limit


def test_the_issue_request_of_290_kb_is_refused_naming_the_field():
    """Issue 21, 4.2: a 290 KB marker once gave 290,054-character prompts; each field now has a bound,
    and text that fits each bound but not the prompt is refused once woven."""
    huge = {**SCENES, "consistency_markers": {"character": "a keeper in a yellow coat " * 11_155}}
    assert len(json.dumps(huge)) > 290_000
    assert refusal("references", huge).startswith("consistency_markers.character: String should have at most")
    every_field_fits = {**SCENES, "consistency_markers": {f"m{n}": "x" * 1000 for n in range(MAX_MARKERS)}}
    message = refusal("references", every_field_fits)
    assert message.startswith("scene_prompts.0: the prompt woven with consistency_markers has ")
    assert all(f"scene_prompts.{n}: " in message for n in range(3))


def test_a_whole_request_check_starts_with_its_field():
    message = refusal("storyboard", json.dumps({"clips": [CLIP] * 33}))  # text: the model's own check
    assert message == "clips: the job would have 66 frames, the limit is 64"


class Exploding:
    """Stands in for a request model: the pre-check must refuse before any validation starts."""

    @classmethod
    def model_validate(cls, *args, **kwargs):
        raise AssertionError("validated")

    model_validate_json = model_validate


class CountingList(list):
    """A list that counts the items anything iterates over."""

    seen = 0

    def __iter__(self):
        for item in super().__iter__():
            CountingList.seen += 1
            yield item


@pytest.mark.parametrize("kind, payload, field", [
    ("storyboard", {"clips": [CLIP] * 10_000}, "clips: the job would have 20000 frames, the limit is 64"),
    ("references", {"scene_prompts": ["a"] * 65}, "scene_prompts: the job would have 65 frames, the limit is 64"),
    ("references", {"scene_prompts": ["a"], "consistency_markers": {str(n): "x" for n in range(10_000)}},
     "consistency_markers: 10000 markers, the limit is 32"),
    ("references", {"scene_prompts": ["a"], "consistency_guidelines": ["g"] * 10_000},
     "consistency_guidelines: 10000 guidelines"),
    ("storyboard", "x" * (1024 * 1024 + 1), "request: the JSON text has 1048577 characters, the limit is 1048576"),
    ("storyboard", b"x" * (1024 * 1024 + 1), "request: the JSON text has 1048577 bytes"),
    ("storyboard", {"clips": [{"start_prompt": "a" * 2_000_000, "end_prompt": "b"}]},
     "clips.0.start_prompt: the request passes the limit of 1048576 characters as JSON"),
    ("storyboard", {"clips": [CLIP], "overrides": {"score_weights": {"pickscore": ["x" * 600_000] * 2}}},
     "overrides.score_weights.pickscore.1: the request passes the limit"),
])
def test_the_precheck_refuses_oversized_requests_before_validating_anything(monkeypatch, kind, payload, field):
    monkeypatch.setitem(REQUEST_MODELS, kind, Exploding)
    assert refusal(kind, payload).startswith(field)


def test_the_precheck_walk_stops_at_the_first_excess():
    """A request of any size costs the walk at most about the limit: it never reads the rest."""
    CountingList.seen = 0
    settings = Settings(max_request_bytes=2048)
    payload = {"clips": [CLIP], "colour": CountingList(range(1_000_000))}
    with pytest.raises(RequestError, match=r"^colour\.\d+: the request passes the limit of 2048"):
        precheck_request("storyboard", payload, settings)
    assert 0 < CountingList.seen < 2048


def test_a_legal_request_at_every_other_limit_passes_the_byte_limit():
    longest = "x" * 4000
    storyboard = {"clips": [{"start_prompt": longest, "end_prompt": longest}] * 32}
    assert len(parse_request("storyboard", storyboard).clips) == 32
    assert len(parse_request("storyboard", json.dumps(storyboard)).clips) == 32
    references = {"scene_prompts": ["y" * 3000] * 64, "continuity_notes": ["n" * 300] * 64,
                  "transition_notes": ["t" * 300] * 63, "consistency_markers": {"character": "c" * 200}}
    assert len(parse_request("references", references).scene_prompts) == 64


def test_the_byte_limit_is_a_setting(monkeypatch):
    monkeypatch.setenv("FRAMEFLEET_MAX_REQUEST_BYTES", "4096")
    settings = Settings()
    assert settings.max_request_bytes == 4096 and Settings.model_fields["max_request_bytes"].default == 1024 * 1024
    body = json.dumps({"clips": [{"start_prompt": "x" * 3500, "end_prompt": "y" * 1000}]})
    assert refusal("storyboard", body, settings).startswith(f"request: the JSON text has {len(body)} characters")
    assert parse_request("storyboard", body)  # the default limit takes it


def test_the_image_model_a_refusal_echoes_is_bounded():
    from framefleet.tasks.job.requests import RegenerateOptions

    message = refusal("storyboard", {"clips": [CLIP], "overrides": {"image_model": "m" * 100_000}})
    assert message.startswith("overrides.image_model: String should have at most 200 characters") and len(message) < 300
    with pytest.raises(ValidationError):
        RegenerateOptions.model_validate({"overrides": {"image_model": "m" * 201}})
