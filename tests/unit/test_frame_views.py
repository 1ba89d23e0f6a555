"""A job's frames as a read returns them (job/frames.py): records parsed when looked up, each read's
own; views (state, clip, selection) as the views hash holds them, a draft's over the finished
frame's."""

from __future__ import annotations

import pytest
from framefleet.tasks.job.frames import DRAFT, FrameRecords, FrameView, FrameViews, current_fields
from framefleet.tasks.job.records import FrameRecord, Selection
from framefleet.tasks.job.states import FrameState


def stored(name: str, clip: int = 1, state: FrameState = FrameState.WAITING, **fields) -> str:
    record = FrameRecord(name=name, clip=clip, original_prompt=f"a prompt for {name}", **fields)
    record.enter(state)
    return record.model_dump_json()


def test_records_are_parsed_on_lookup_and_are_each_reads_own(frame_parses):
    raw = {"a": stored("a"), "b": stored("b", state=FrameState.SKIPPED)}
    first, second = FrameRecords(raw), FrameRecords(dict(raw))
    assert list(first) == ["a", "b"] and len(first) == 2 and "a" in first and "c" not in first
    assert frame_parses == []  # iterating, counting and `in` parse nothing
    record = first["a"]
    assert first["a"] is record and len(frame_parses) == 1
    record.enter(FrameState.FAILED)
    assert FrameViews.of_records(first)["a"].state is FrameState.FAILED  # its read sees the change
    assert second["a"].state is FrameState.WAITING  # no other read does


def test_a_view_is_what_a_dispatch_needs_of_a_record_and_stays_small():
    selection = Selection(index=1, key="jobs/job/a/v1.png", frame_key="jobs/job/frames/a.png")
    record = FrameRecord.model_validate_json(stored("a", clip=3, state=FrameState.SUCCEEDED, selected=selection,
                                                    enhanced_prompt="x" * 5000))
    view = FrameView.of(record)
    assert view == (FrameState.SUCCEEDED, 3, "jobs/job/frames/a.png")
    assert FrameView.load(view.dump()) == view and len(view.dump()) < 100  # not the 5 KB prompt
    assert FrameView.load(FrameView.of(FrameRecord.model_validate_json(stored("b"))).dump()) == (
        FrameState.WAITING, 1, None)
    with pytest.raises(ValueError):
        FrameView.load('["no such state", 1, null]')


def test_views_overlay_the_running_revisions_drafts_and_count_what_is_settled():
    finished = FrameView(FrameState.SUCCEEDED, 1, "jobs/j/frames/a.png")
    raw = {"a": finished.dump(), "b": FrameView(FrameState.SKIPPED, 1, None).dump(),
           DRAFT + "b": FrameView(FrameState.WAITING, 1, None).dump(), "c": FrameView(FrameState.READY, 2, None).dump()}
    assert current_fields(raw)["b"] == (DRAFT + "b", raw[DRAFT + "b"]) and current_fields(raw)["a"] == ("a", raw["a"])
    views = FrameViews.load(raw, {"c": ["record as read"]})
    assert sorted(views) == ["a", "b", "c"] and views["b"].state is FrameState.WAITING  # the draft's
    assert views.settled() == 1 and views.selections() == {"a": "jobs/j/frames/a.png"}
    assert views.records == {"c": ["record as read"]} and FrameViews.load(raw).records == {}
    records = FrameRecords({"a": stored("a", state=FrameState.SKIPPED), "b": stored("b", clip=2)})
    assert dict(FrameViews.of_records(records)) == {"a": (FrameState.SKIPPED, 1, None),
                                                    "b": (FrameState.WAITING, 2, None)}
