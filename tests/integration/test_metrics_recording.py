"""The fleet's metrics are recorded once per event, however often a step repeats its write (any step
can run twice): on the real test Redis, with the job model's own writes, no workers."""

from __future__ import annotations

import pytest
from framefleet.tasks.job import metrics
from framefleet.tasks.job.frames import StaleWrite
from framefleet.tasks.job.keys import FLEET_METRICS, JOB_STATE_COUNTS
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.redis import script, state_client
from framefleet.tasks.job.states import FrameState, JobState, NoteKind

from tests.helpers import stored_job, unique_id

pytestmark = pytest.mark.integration


def figures() -> dict[str, float]:
    """The fleet's figures, with what this process counted written first (job/metrics.py)."""
    client = state_client()
    metrics.flush(client)
    counts = {f"jobs:{state}": float(n) for state, n in client.hgetall(JOB_STATE_COUNTS).items()}
    return {**counts, **{key: float(v) for key, v in client.hgetall(FLEET_METRICS).items()}}


def moved(before: dict, after: dict) -> dict:
    """What changed, rounded (a float counter that other tests moved first differs by rounding)."""
    return {key: round(after.get(key, 0) - before.get(key, 0), 9) for key in set(before) | set(after)
            if after.get(key, 0) != before.get(key, 0)}


def test_job_states_and_finished_jobs_move_once_per_change(broker_url):
    start = figures()
    job = Job(stored_job(unique_id("counted")))
    assert moved(start, figures()) == {"jobs:queued": 1}
    job.progress.write(JobState.RUNNING, stage="enhance", message="running")
    job.progress.write(JobState.RUNNING, stage="enhance", message="still running")  # a second copy's report
    assert moved(start, figures()) == {"jobs:running": 1}
    job.finish("succeeded", 2, f"jobs/{job.id}/manifest.json", revision=0)
    job.finish("succeeded", 2, f"jobs/{job.id}/manifest.json", revision=0)  # a re-driven finalize
    finished = moved(start, figures())
    assert finished.pop(metrics.field("jobs_finished_total", status="succeeded")) == 1
    assert finished.pop("job_duration_seconds_sum") > 0
    assert finished == {"job_duration_seconds_bucket|le=5": 1}  # nothing left running or queued

    parked = Job(stored_job(unique_id("parked")))
    before = figures()
    parked.park("step select died 4 times")
    parked.park("step select died 4 times")  # already done: counted once
    assert moved(before, figures()) == {"jobs:queued": -1, "jobs_finished_total|status=parked": 1}


def test_a_fallback_is_counted_with_its_transition_and_never_by_a_refused_one(broker_url):
    job = Job(stored_job(unique_id("fallback")))
    frame = job.spec.plan.frames[0].name
    before = figures()

    def fell_back(record) -> None:
        record.add_note(NoteKind.ENHANCEMENT_FAILED, "enhancement failed: original prompt, single image")
        record.add_note(NoteKind.QUALITY_LOW, "a warning, not a fallback")

    stage = metrics.observation("frame_stage_seconds", 0.3, stage="enhance")
    waiting = lambda record: record.state is FrameState.WAITING  # noqa: E731
    job.frames.transition(frame, FrameState.READY, fell_back, expect=waiting, measured=stage)
    with pytest.raises(StaleWrite):  # a late second copy: refused, writes nothing, counts nothing
        job.frames.transition(frame, FrameState.READY, fell_back, expect=waiting, measured=stage)
    assert moved(before, figures()) == {
        "fallbacks_total|kind=enhancement_failed": 1,
        "frame_stage_seconds_bucket|le=0.5,stage=enhance": 1, "frame_stage_seconds_sum|stage=enhance": 0.3}


def test_a_batch_of_counts_is_added_once_and_a_bad_field_stops_none_of_the_others(broker_url):
    client = state_client()
    figures()  # what this process counted before is written now
    good, bad = metrics.field("images_stored_total"), metrics.field("test_not_a_number")
    client.hset(FLEET_METRICS, bad, "not a number")
    before = float(client.hget(FLEET_METRICS, good) or 0)
    metrics.count("images_stored_total", 3)
    metrics.count("test_not_a_number", 1)
    metrics.flush(client)
    assert float(client.hget(FLEET_METRICS, good)) - before == 3
    assert client.hget(FLEET_METRICS, bad) == "not a number"  # left as it was
    assert metrics.pending.drain() == {}  # nothing kept to add again at the next flush
    client.hdel(FLEET_METRICS, bad)

    # A batch sent twice (a retried command whose reply was lost) is added once.
    add = script(client, "add_metrics")
    batch = f"{FLEET_METRICS}:batch:{unique_id('twice')}"
    before = figures()
    for _ in range(2):
        add(keys=[FLEET_METRICS, batch], args=[60, good, "2.0"])
    assert moved(before, figures()) == {good: 2}
