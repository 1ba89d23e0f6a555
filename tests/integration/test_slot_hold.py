"""Slot holding: a running job keeps the image slots its last round freed until its next round is
enqueued, so a new job's first frame cannot take them in the gap (tasks/slot_hold.py).

The step tests run the tasks' functions in this process on the real test Redis (the messages they
send are read from the broker, then purged); the fleet test runs real workers. Orders and counts
only: the timings are in `make bench-load`.
"""

from __future__ import annotations

import json
import threading

import pytest
import redis

from framefleet.config.celery import broker_lists
from framefleet.config.settings import get_settings
from framefleet.tasks.broker import decode_message
from framefleet.tasks.keys import ENHANCED
from framefleet.tasks.slot_hold import HOLD_SLOT
from framefleet.tasks.state import JobState
from framefleet.tasks.store import open_store
from framefleet.workers.client import job_status, submit_job, wait_for_job
from tests.helpers import storyboard_request, unique_id, wait_until

pytestmark = pytest.mark.integration

FRAMES = ["clip_001_start", "clip_001_end"]


def holders_queued(redis_url: str, job_id: str) -> dict[str, list[list]]:
    """The job's slot holders in each images list (served first, then the new-job list)."""
    client = redis.Redis.from_url(redis_url)
    found = {}
    for name in broker_lists("images"):
        tasks = [decode_message(raw, unacked=False) for raw in client.lrange(name, 0, -1)]
        found[name] = [t.args for t in tasks if t is not None and t.name == HOLD_SLOT and t.args[0] == job_id]
    return found


@pytest.fixture
def enqueued_job(local_steps, monkeypatch):
    """A one-clip job whose enhancements ran here: its first frame's round is enqueued."""
    from framefleet.tasks import pipeline

    def settings(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"FRAMEFLEET_{name}", value)
        get_settings.cache_clear()

    job_id = pipeline.submit_job("storyboard", storyboard_request(unique_id("hold"), 1))["job_id"]
    for frame in FRAMES:
        pipeline.enhance_prompt(job_id, frame)
    return job_id, settings


def test_a_variation_with_a_later_frame_to_run_sends_one_holder_at_continuation_priority(enqueued_job, broker_url):
    from framefleet.tasks import pipeline

    job_id, settings = enqueued_job
    assert JobState(job_id).rounds_enqueued() == 1
    pipeline.generate_variation(job_id, FRAMES[0], ENHANCED, 1)
    served_first, new_jobs = broker_lists("images")
    assert holders_queued(broker_url, job_id) == {served_first: [[job_id, FRAMES[0], 0, ENHANCED, 4, 1]], new_jobs: []}

    settings(SCHEDULING="fifo")
    pipeline.generate_variation(job_id, FRAMES[0], ENHANCED, 2)
    settings(SCHEDULING="priority", SLOT_HOLD_S="0")
    pipeline.generate_variation(job_id, FRAMES[0], ENHANCED, 3)
    assert len(holders_queued(broker_url, job_id)[served_first]) == 1  # FIFO and holding off send none

    settings(SLOT_HOLD_S="1")
    redis.Redis.from_url(broker_url).delete(new_jobs)  # no new job waits for a slot: nothing to hold it from
    pipeline.generate_variation(job_id, FRAMES[0], ENHANCED, 4)
    assert len(holders_queued(broker_url, job_id)[served_first]) == 1


def test_no_holder_after_the_last_frame(enqueued_job, broker_url):
    from framefleet.tasks import pipeline

    job_id, _ = enqueued_job
    pipeline.generate_variation(job_id, FRAMES[1], ENHANCED, 1)  # nothing of the job runs after it
    assert all(not found for found in holders_queued(broker_url, job_id).values())


def test_a_holder_waits_for_the_next_round_and_no_longer(enqueued_job, monkeypatch):
    from framefleet.tasks import pipeline, slot_hold
    from framefleet.tasks.slot_hold import hold_slot

    job_id, settings = enqueued_job
    monkeypatch.setattr(slot_hold, "CHECK_S", 30.0)  # only the wake-up (or a deadline) can end a hold
    state = JobState(job_id)
    settings(SLOT_HOLD_SIBLINGS_S="0.2", SLOT_HOLD_S="0.2")
    results = [pipeline.generate_variation(job_id, FRAMES[0], ENHANCED, 1)]
    assert hold_slot(job_id, FRAMES[0], 0, ENHANCED, 4, 1)["ended"] == "round still running"  # 1 of 4 stored
    results += [pipeline.generate_variation(job_id, FRAMES[0], ENHANCED, index) for index in (2, 3, 4)]
    assert hold_slot(job_id, FRAMES[0], 0, ENHANCED, 4, 1)["ended"] == "no next round in time"

    # The round is complete: a holder now waits (far longer than this takes) until scoring and
    # selection enqueue the next frame's round, and ends then.
    settings(SLOT_HOLD_S="60")
    ended = []
    holder = threading.Thread(target=lambda: ended.append(hold_slot(job_id, FRAMES[0], 0, ENHANCED, 4, 1)["ended"]))
    holder.start()
    scored = pipeline.score_variations(results, job_id, FRAMES[0])
    pipeline.select_variation(scored, job_id, FRAMES[0], ENHANCED)
    holder.join(30)
    assert ended == ["next round enqueued"] and state.rounds_enqueued() == 2
    assert state.frame(FRAMES[1]).timings.enqueued is not None

    with monkeypatch.context() as patch:  # a worker whose pool also serves selection: no hold
        patch.setattr(slot_hold, "consumed_queues", lambda: frozenset({"images", "control"}))
        assert hold_slot(job_id, FRAMES[1], 0, ENHANCED, 4, 2)["ended"] == "worker serves other queues"
    state.cancel()
    assert hold_slot(job_id, FRAMES[1], 0, ENHANCED, 4, 2)["ended"] == "job closed"


def test_a_running_job_keeps_its_slots_between_frames(celery_app, fleet_for_test, tmp_path):
    """One round fills the images worker: while the first job runs, no other job's first frame
    gets a slot in the gaps between its frames. (Without holding it does: the gap after every
    frame hands the freed slots to the jobs waiting in the new-job list.)"""
    store = open_store(f"file://{tmp_path / 'artifacts'}")
    # Generous waits: the test is about the gap, not about a slow sibling or a slow machine
    # (a holder ends when the next round is enqueued, so they cost nothing here).
    fleet_for_test({"FRAMEFLEET_STORE_URL": store.url, "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": "0.4",
                    "FRAMEFLEET_SLOT_HOLD_S": "20", "FRAMEFLEET_SLOT_HOLD_SIBLINGS_S": "20"},
                   shapes={"images": ("threads", 4)})
    first = submit_job(celery_app, "storyboard", storyboard_request(unique_id("keeps"), 2))
    wait_until(lambda: job_status(first).stage in ("generate", "score", "done"), timeout_s=60)
    others = [submit_job(celery_app, "storyboard", storyboard_request(unique_id("waits"), 1)) for _ in range(3)]
    for job_id in [first, *others]:
        assert wait_for_job(job_id, timeout_s=180).outcome == "succeeded"

    manifests = {job_id: json.loads(store.get(f"jobs/{job_id}/manifest.json")) for job_id in [first, *others]}
    first_frames = manifests[first]["frames"]
    last_round_started = min(start for start, _ in first_frames[-1]["timings"]["variations"])
    others_started = [start for job_id in others for start, _ in manifests[job_id]["frames"][0]["timings"]["variations"]]
    assert len(others_started) == 12
    assert all(start > last_round_started for start in others_started)
    # ... although they were waiting for a slot during the first job's gaps
    assert max(manifests[job_id]["frames"][0]["timings"]["enqueued"] for job_id in others) < last_round_started
    assert len(first_frames) == 4
