"""Property-based fuzzing of the request models: a validation error, never a crash."""

from __future__ import annotations

import json

from framefleet.tasks.job.requests import ReferenceImagesRequest, RequestError, StoryboardRequest, parse_request
from hypothesis import given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FIELDS = ["job_id", "clips", "aspect_ratio", "reference_image", "overrides", "scene_prompts", "consistency_markers",
          "continuity_notes", "consistency_guidelines", "transition_notes", "initial_reference_image", "kind"]
requests = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=8)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["storyboard", "references"]), payload=requests)
def test_any_json_object_is_a_request_or_a_field_named_error(kind, payload):
    try:
        request = parse_request(kind, payload)
    except RequestError as error:
        assert ":" in str(error)  # "field: message"
    else:
        assert isinstance(request, (StoryboardRequest, ReferenceImagesRequest))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_is_a_request_or_an_error(text):
    try:
        parse_request("storyboard", text)
    except RequestError:
        pass


@settings(max_examples=100, deadline=None)
@given(job_id=st.text(max_size=80), prompt=st.text(max_size=80))
def test_job_ids_never_escape_the_store(job_id, prompt):
    try:
        request = parse_request("storyboard", json.dumps({"job_id": job_id,
                                                          "clips": [{"start_prompt": prompt, "end_prompt": "x"}]}))
    except RequestError:
        return
    assert "/" not in request.job_id and ".." not in request.job_id and not request.job_id.startswith("-")


# Issue 21: the pre-check before validation ---------------------------------------------------
from framefleet.config.settings import Settings  # noqa: E402
from framefleet.tasks.job.requests import precheck_request  # noqa: E402

SMALL = Settings(max_request_bytes=1024, max_frames=4)
big_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=400),
    lambda children: st.lists(children, max_size=12) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40,
)
big_requests = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), big_json_values, max_size=8)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["storyboard", "references"]), payload=big_requests, as_text=st.booleans())
def test_the_precheck_refuses_only_what_is_over_a_limit_and_names_a_field_of_it(kind, payload, as_text):
    compact = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    try:
        precheck_request(kind, compact if as_text else payload, SMALL)
    except RequestError as error:
        field, reason = str(error).split(": ", 1)
        assert field == "request" or any(field == str(k) or field.startswith(f"{k}.") for k in payload)
        if "max_request_bytes" in reason:
            assert len(compact) > SMALL.max_request_bytes  # never refused for size when it fits
        else:  # a count
            assert any(isinstance(v, (list, dict)) and len(v) > 2 for v in payload.values())
