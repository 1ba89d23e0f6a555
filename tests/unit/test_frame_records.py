"""A job's frames as a read returns them (job/frames.py FrameRecords): records parsed when looked up,
each read's own; views (state, clip, selection) from a per-process cache that holds one view per
frame, replaced when the frame's record changes, and bounded."""

from __future__ import annotations

from framefleet.tasks.job import frames as frames_module
from framefleet.tasks.job.frames import FrameRecords
from framefleet.tasks.job.records import FrameRecord, Selection
from framefleet.tasks.job.states import FrameState


def stored(name: str, clip: int = 1, state: FrameState = FrameState.WAITING, **fields) -> str:
    record = FrameRecord(name=name, clip=clip, original_prompt=f"a prompt for {name}", **fields)
    record.enter(state)
    return record.model_dump_json()


def test_records_are_parsed_on_lookup_and_are_each_reads_own(frame_parses):
    raw = {"a": stored("a"), "b": stored("b", state=FrameState.SKIPPED)}
    first, second = FrameRecords("job", raw), FrameRecords("job", dict(raw))
    assert list(first) == ["a", "b"] and len(first) == 2 and "a" in first and "c" not in first
    assert frame_parses == []  # iterating, counting and `in` parse nothing
    record = first["a"]
    assert first["a"] is record and len(frame_parses) == 1
    record.enter(FrameState.FAILED)
    assert first.view("a").state is FrameState.FAILED and first.settled() == 2  # its read sees the change
    assert second["a"].state is FrameState.WAITING and second.settled() == 1  # no other read does


def test_a_view_is_parsed_once_per_record_and_replaced_when_the_record_changes(frame_parses):
    selection = Selection(index=1, key="jobs/job/a/v1.png", frame_key="jobs/job/frames/a.png")
    raw = {"a": stored("a", state=FrameState.SUCCEEDED, selected=selection), "b": stored("b", clip=2)}
    view = FrameRecords("job", raw).view("a")
    assert (view.state, view.clip, view.selected_key) == (FrameState.SUCCEEDED, 1, "jobs/job/frames/a.png")
    assert FrameRecords("job", dict(raw)).settled() == 1 and len(frame_parses) == 2
    assert FrameRecords("job", dict(raw)).settled() == 1 and len(frame_parses) == 2  # unchanged: none parsed
    assert FrameRecords("other-job", dict(raw)).view("a") == view and len(frame_parses) == 3  # by job and frame
    changed = {**raw, "b": stored("b", clip=2, state=FrameState.SKIPPED)}
    assert FrameRecords("job", changed).settled() == 2 and len(frame_parses) == 4  # only b again
    assert len(frames_module._views.views) == 3  # b's new view replaced its old one


def test_the_cache_keeps_at_most_its_bound_least_recent_out(frame_parses, monkeypatch):
    monkeypatch.setattr(frames_module, "VIEWS_CACHED", 3)
    raw = {name: stored(name) for name in "abcd"}
    FrameRecords("job", raw).settled()
    assert len(frame_parses) == 4 and [key for _, key in frames_module._views.views] == ["b", "c", "d"]
    assert FrameRecords("job", raw).view("d").state is FrameState.WAITING and len(frame_parses) == 4  # kept
    FrameRecords("job", raw).view("a")
    assert len(frame_parses) == 5 and [key for _, key in frames_module._views.views] == ["c", "d", "a"]
