"""The published contracts: `framefleet schema ...` prints JSON Schema a main app in any language can
validate against, and the README's example requests pass it (and the fleet's own check)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from framefleet.tasks.job.records import (
    CompletionCallback,
    FrameRecord,
    JobTimings,
    Manifest,
    Scores,
    Selection,
    VariationRecord,
)
from framefleet.tasks.job.requests import RequestError, parse_request
from framefleet.workers.cli import main
from jsonschema import Draft202012Validator, ValidationError

README = Path(__file__).resolve().parents[2] / "README.md"


def published(capsys, *contract: str) -> Draft202012Validator:
    assert main(["schema", *contract]) == 0
    schema = json.loads(capsys.readouterr().out)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def readme_example_requests() -> list[dict]:
    section = README.read_text().split("## Main-app contract", 1)[1].split("\n## ", 1)[0]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def test_the_readme_example_requests_validate_against_the_published_schemas(capsys):
    examples = {"storyboard" if "clips" in example else "references": example for example in readme_example_requests()}
    assert sorted(examples) == ["references", "storyboard"]
    for kind, example in examples.items():
        published(capsys, "request", kind).validate(example)
        assert parse_request(kind, example).job_id == example["job_id"]  # the fleet accepts it too


@pytest.mark.parametrize("change, field", [
    (lambda r: r["clips"][0].pop("end_prompt"), "end_prompt"),
    (lambda r: r.update(colour="red"), "colour"),
    (lambda r: r.update(aspect_ratio="5:4"), "aspect_ratio"),
    (lambda r: r.update(job_id="../etc"), "job_id"),
    (lambda r: r["overrides"].update(num_variations=9), "num_variations"),
])
def test_the_request_schema_refuses_what_the_fleet_refuses(capsys, change, field):
    request = next(r for r in readme_example_requests() if "clips" in r)
    change(request)
    with pytest.raises(ValidationError):
        published(capsys, "request", "storyboard").validate(request)
    with pytest.raises(RequestError, match=field):
        parse_request("storyboard", request)


def test_the_manifest_and_callback_schemas_describe_what_the_fleet_writes(capsys):
    variation = VariationRecord(index=1, key="jobs/j/variations/clip_001_start/v1.png", timing=(1.0, 2.0),
                                scores=Scores(pickscore=70.0, clip_score=60.0, aesthetic=50.0, overall=64.0))
    frame = FrameRecord(name="clip_001_start", clip=1, status="succeeded", original_prompt="a harbour",
                        variations=[variation], selected=Selection(index=1, key=variation.key, frame_key="f.png"))
    manifest = Manifest(job_id="j", kind="storyboard", status="partial", scorer="heuristic",
                        providers={"llm": "offline", "images": "offline"}, config={"num_variations": 1},
                        failed_clips=[2], timings=JobTimings(submitted=1.0, finished=3.0), frames=[frame])
    manifest_schema = published(capsys, "manifest")
    manifest_schema.validate(manifest.model_dump(mode="json"))
    with pytest.raises(ValidationError):
        manifest_schema.validate({**manifest.model_dump(mode="json"), "status": "exploded"})

    callback = CompletionCallback(job_id="j", kind="storyboard", status="partial", manifest_key="jobs/j/manifest.json",
                                  failed_clips=[2])
    callback_schema = published(capsys, "callback")
    callback_schema.validate(callback.model_dump(mode="json"))
    with pytest.raises(ValidationError):
        callback_schema.validate({"job_id": "j", "kind": "storyboard", "status": "succeeded"})  # no manifest_key


def test_a_request_schema_needs_its_kind(capsys):
    assert main(["schema", "request"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kind" in err and "storyboard" in err
