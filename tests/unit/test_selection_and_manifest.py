"""Selection fallbacks and the manifest schema (plain functions, no broker)."""

import json
from types import SimpleNamespace

from framefleet.config.settings import Settings
from framefleet.tasks.artifacts.manifest import build_manifest, estimate_cost
from framefleet.tasks.job.keys import JobKeys
from framefleet.tasks.job.ledgers import Ledger
from framefleet.tasks.job.plan import build_frame_plan
from framefleet.tasks.job.records import FrameRecord, Scores, Selection, VariationRecord
from framefleet.tasks.job.requests import JobConfig, JobOverrides, parse_request
from framefleet.tasks.job.spec import JobSpec
from framefleet.tasks.job.states import Note, NoteKind, PromptSource
from framefleet.tasks.steps.generate import prompt_for
from framefleet.tasks.steps.select import best_variation

MANIFEST_KEYS = {"job_id", "kind", "status", "scorer", "providers", "config", "failed_clips", "warnings", "timings", "cost", "contact_sheet", "revision", "budget",
                 "frames"}
FRAME_KEYS = {"name", "clip", "status", "revision", "inputs", "original_prompt", "enhanced_prompt", "enhancement", "variations",
              "selected", "scorer", "warnings", "fallbacks", "timings", "overrides", "history",
              "state", "round", "notes",  # the job model: its state machine and typed notes
              "judge"}  # the vision judge's verdict on a close call


def variation(index, overall=None, pickscore=None, key=True):
    scores = Scores(overall=overall, pickscore=pickscore) if overall is not None else None
    return VariationRecord(index=index, key=f"v{index}.png" if key else None, scores=scores,
                           error=None if key else "failed")


def test_selects_rank_one_and_ranks_every_scored_variation():
    variations = [variation(1, 40, 10), variation(2, 90, 50), variation(3, key=False), variation(4, 90, 70)]
    notes = []
    chosen = best_variation(variations, None, notes)
    assert chosen.index == 4 and notes == []
    assert [v.rank for v in variations] == [3, 2, None, 1]


def test_scoring_failure_takes_the_first_generated_image_unranked():
    variations = [variation(1, key=False), variation(2), variation(3)]
    notes = []
    assert best_variation(variations, "CUDA out of memory", notes).index == 2
    assert notes == [Note(kind=NoteKind.SCORING_FAILED, text="scoring failed: first generated image, unranked")]
    assert all(v.rank is None for v in variations)


def spec(clips=2):
    request = parse_request("storyboard", {"job_id": "j1", "clips": [{"start_prompt": "a", "end_prompt": "b"}] * clips})
    return JobSpec(job_id="j1", kind="storyboard", aspect_ratio="16:9",
                   config=JobConfig.resolve(Settings(), JobOverrides()), plan=build_frame_plan(request),
                   providers={"llm": "offline", "images": "offline"}, submitted=1.0)


def frames(statuses):
    out = {}
    for planned, status in zip(spec(2).plan.frames, statuses):
        record = FrameRecord(name=planned.name, clip=planned.clip, original_prompt="a", status=status,
                             scorer="heuristic")
        if status == "succeeded":
            record.selected = Selection(index=1, key="k", frame_key="f", overall=20.0)
            record.warnings = ["quality 20.0 is below the threshold 30.0"]
        out[planned.name] = record
    return out


def test_manifest_schema_and_outcomes():
    manifest = build_manifest(spec(2), frames(["succeeded"] * 4), finished=2.0)
    data = json.loads(manifest.model_dump_json())
    assert set(data) == MANIFEST_KEYS and set(data["frames"][0]) == FRAME_KEYS
    assert set(data["timings"]) == {"submitted", "finished"}
    assert set(data["frames"][0]["timings"]) == {"enqueued", "enhance", "variations", "score"}
    assert data["status"] == "succeeded" and data["failed_clips"] == [] and data["scorer"] == "heuristic"
    assert data["warnings"][0] == "clip_001_start: quality 20.0 is below the threshold 30.0"

    partial = build_manifest(spec(2), frames(["succeeded", "succeeded", "failed", "skipped"]), finished=2.0)
    assert partial.status == "partial" and partial.failed_clips == [2]
    failed = build_manifest(spec(2), frames(["failed", "skipped", "failed", "skipped"]), finished=2.0)
    assert failed.status == "failed" and failed.failed_clips == [1, 2]


def test_the_cost_totals_are_the_frames_counters_summed():
    stored = {".": "", "clip_001_start:llm_calls": "6", "clip_001_start:prompt_tokens": "900",
              "clip_001_end:llm_calls": "4", "clip_001_end:predictions_created": "4",
              "total:llm_calls": "10"}  # a sum stored beside the counters is not counted again
    counters = Ledger.parse_costs(stored)
    assert counters["total"] == {"llm_calls": 10, "prompt_tokens": 900, "predictions_created": 4}
    assert set(counters) == {"clip_001_start", "clip_001_end", "total"}
    cost = estimate_cost(spec(1).model_copy(update={"providers": {"images": "replicate"}}), counters, Settings())
    assert cost.total["predictions_created"] == 4 and set(cost.frames) == {"clip_001_start", "clip_001_end"}
    assert cost.estimated_usd == round(4 * Settings().prediction_usd(spec(1).config.image_model), 6)
    assert Ledger.parse_costs({".": ""}) == {}
    # a cost write counts the frame's counters only
    ledger = Ledger(SimpleNamespace(r=None, keys=JobKeys("j1")))
    assert [field for *_, field, _ in ledger.cost_commands("clip_001_start", llm_calls=1, prompt_tokens=90)] == [
        "clip_001_start:llm_calls", "clip_001_start:prompt_tokens"]


def test_images_are_scored_against_the_prompt_they_were_generated_from():
    record = FrameRecord(name="f", original_prompt="a keeper", enhanced_prompt="a keeper, 35mm lens, dusk light")
    assert prompt_for(record, PromptSource.ENHANCED) == "a keeper, 35mm lens, dusk light"
    assert prompt_for(record, PromptSource.ORIGINAL) == "a keeper"  # the generation fallback
