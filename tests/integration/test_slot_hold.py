"""Slot holding: a running job keeps the image slots its last round used until its next round is
enqueued, so a new job's first frame cannot take them in the gap (tasks/coordination/slot_hold.py).

The step tests run the tasks' functions in this process on the real test Redis; the fleet test
runs real workers. Orders and counts only: the timings are in `make bench-load`.
"""

from __future__ import annotations

import json
import threading

import pytest
import redis
from framefleet.config.celery import broker_lists
from framefleet.config.settings import get_settings
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.coordination.leases import Lease
from framefleet.tasks.coordination.slot_hold import SlotHold, slot_hold_due
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.rounds import Rounds
from framefleet.tasks.job.states import PromptSource
from framefleet.workers.client import job_status, submit_job, wait_for_job

from tests.helpers import create_here, storyboard_request, unique_id, wait_until

ENHANCED = PromptSource.ENHANCED

pytestmark = pytest.mark.integration

FRAMES = ["clip_001_start", "clip_001_end"]


@pytest.fixture
def enqueued_job(local_steps, monkeypatch):
    """A one-clip job whose enhancements ran here: its first frame's round is enqueued."""
    from framefleet.tasks import entry

    def settings(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"FRAMEFLEET_{name}", value)
        get_settings.cache_clear()

    job_id = create_here("storyboard", storyboard_request(unique_id("hold"), 1))
    for frame in FRAMES:
        entry.enhance_prompt(job_id, frame)
    return job_id, settings


def test_a_variation_holds_its_slot_only_while_a_new_job_waits_and_a_later_frame_is_to_run(enqueued_job, broker_url,
                                                                                             monkeypatch):
    from framefleet.tasks.coordination import broker

    monkeypatch.setattr(broker, "WAITING_MAX_AGE_S", {True: 0.0, False: 0.0})  # read the broker at every call
    job_id, settings = enqueued_job
    state = Job(job_id)
    spec = state.spec
    assert state.rounds.enqueued() == 1
    due = slot_hold_due(state, spec, FRAMES[0], 0, ENHANCED, 4)
    # It waits for the job's second round, from the round as it was: no variation recorded or running.
    assert due == SlotHold(job_id, FRAMES[0], 0, ENHANCED, 4, (1, 0, 4, False))
    assert slot_hold_due(state, spec, FRAMES[1], 0, ENHANCED, 4) is None  # nothing of the job runs after it

    settings(SCHEDULING="fifo")
    assert slot_hold_due(state, spec, FRAMES[0], 0, ENHANCED, 4) is None
    settings(SCHEDULING="priority", SLOT_HOLD_S="0")
    assert slot_hold_due(state, spec, FRAMES[0], 0, ENHANCED, 4) is None
    settings(SLOT_HOLD_S="1")
    *_, new_jobs = broker_lists("images")
    redis.Redis.from_url(broker_url).delete(new_jobs)  # no new job waits for a slot: nothing to hold it from
    assert slot_hold_due(state, spec, FRAMES[0], 0, ENHANCED, 4) is None


def test_a_holds_first_view_is_read_with_the_write_that_stores_the_variation(enqueued_job):
    """The view a hold starts from is read in the round trip that stores the variation's record (no
    round trip of its own), as the round stands right after that write; it is used once."""
    from framefleet.tasks.job.records import VariationRecord

    job_id, _ = enqueued_job
    state, other = Job(job_id), Job(job_id)
    state.after_outcome = state.rounds.prefetch_hold_view(FRAMES[0], 0, ENHANCED, 4)
    state.rounds.save_variation(FRAMES[0], 0, ENHANCED, VariationRecord(index=1, prompt_source=ENHANCED, error="x"), {})
    other.rounds.save_variation(FRAMES[0], 0, ENHANCED, VariationRecord(index=2, prompt_source=ENHANCED, error="x"), {})
    assert state.after_outcome is None
    assert state.rounds.hold_view(FRAMES[0], 0, ENHANCED, 4) == (1, 1, 3, False)  # as its own write left it
    assert state.rounds.hold_view(FRAMES[0], 0, ENHANCED, 4) == (1, 2, 2, False)  # then read afresh


def test_a_hold_waits_for_the_next_round_and_no_longer(enqueued_job, monkeypatch):
    from framefleet.tasks import entry
    from framefleet.tasks.coordination import slot_hold
    from framefleet.tasks.coordination.slot_hold import hold_slot

    job_id, settings = enqueued_job
    state = Job(job_id)

    def seen(frame: str) -> tuple:  # what the variation reads as it returns (slot_hold_due)
        return state.rounds.hold_view(frame, 0, ENHANCED, 4)

    settings(SLOT_HOLD_SIBLINGS_S="0.2", SLOT_HOLD_S="0.2")
    results = [entry.generate_variation(job_id, FRAMES[0], ENHANCED, 1)]
    # Its 3 siblings have not started (in a fleet: they wait for a slot): the slot is theirs.
    assert hold_slot(job_id, FRAMES[0], 0, ENHANCED, 4, seen(FRAMES[0]))["ended"] == "a sibling waits for a slot"
    siblings = [Lease(state, f"generate:{FRAMES[0]}/0/{ENHANCED}/{index}") for index in (2, 3, 4)]
    assert all(lease.acquire() for lease in siblings)  # now they run (hold their steps' leases)
    # 1 of 4 stored
    assert hold_slot(job_id, FRAMES[0], 0, ENHANCED, 4, seen(FRAMES[0]))["ended"] == "round still running"
    for lease in siblings:
        lease.release(finished=False)
    results += [entry.generate_variation(job_id, FRAMES[0], ENHANCED, index) for index in (2, 3, 4)]
    assert hold_slot(job_id, FRAMES[0], 0, ENHANCED, 4, seen(FRAMES[0]))["ended"] == "no next round in time"

    # The round is complete: a hold now waits (far longer than this takes) until scoring and
    # selection enqueue the next frame's round, and ends then.
    settings(SLOT_HOLD_S="60")
    ended, reads = [], []
    before = seen(FRAMES[0])
    hold_view = Rounds.hold_view
    with monkeypatch.context() as patch:
        patch.setattr(Rounds, "hold_view", lambda *args: reads.append(args) or hold_view(*args))  # none here
        holder = threading.Thread(
            target=lambda: ended.append(hold_slot(job_id, FRAMES[0], 0, ENHANCED, 4, before)["ended"]))
        holder.start()
        scored = entry.score_variations(results, job_id, FRAMES[0])
        entry.select_variation(scored, job_id, FRAMES[0], ENHANCED)
        holder.join(30)
    assert ended == ["next round enqueued"] and state.rounds.enqueued() == 2
    assert reads == []  # woken, not polling: the round and job are read again only at a bound
    assert state.frames.get(FRAMES[1]).timings.enqueued is not None

    with monkeypatch.context() as patch:  # a worker whose pool also serves selection: no hold
        patch.setattr(slot_hold, "consumed_queues", lambda: frozenset({"images", "control"}))
        assert hold_slot(job_id, FRAMES[1], 0, ENHANCED, 4, seen(FRAMES[1]))["ended"] == "worker serves other queues"
    state.cancel(0)
    assert hold_slot(job_id, FRAMES[1], 0, ENHANCED, 4, seen(FRAMES[1]))["ended"] == "job closed"


def test_a_hold_whose_round_completes_meanwhile_reads_it_at_the_bound_and_waits_on(enqueued_job, monkeypatch):
    """A hold reads the round again only at its bound: a round complete by then moves it from
    ``slot_hold_siblings_s`` to ``slot_hold_s``, and the next round still ends it."""
    from framefleet.tasks import entry
    from framefleet.tasks.coordination.slot_hold import hold_slot

    job_id, settings = enqueued_job
    state = Job(job_id)
    settings(SLOT_HOLD_SIBLINGS_S="4", SLOT_HOLD_S="60")  # time enough to store the siblings
    results = [entry.generate_variation(job_id, FRAMES[0], ENHANCED, 1)]
    siblings = [Lease(state, f"generate:{FRAMES[0]}/0/{ENHANCED}/{index}") for index in (2, 3, 4)]
    assert all(lease.acquire() for lease in siblings)  # the rest of the round runs
    ended, reads = [], []
    before = state.rounds.hold_view(FRAMES[0], 0, ENHANCED, 4)
    hold_view = Rounds.hold_view
    with monkeypatch.context() as patch:
        def spied(*args):  # the hold's own reads (the variations stored here read a view too)
            view = hold_view(*args)
            if threading.current_thread() is holder:
                reads.append(view)
            return view

        patch.setattr(Rounds, "hold_view", spied)
        holder = threading.Thread(
            target=lambda: ended.append(hold_slot(job_id, FRAMES[0], 0, ENHANCED, 4, before)["ended"]))
        holder.start()
        for lease in siblings:
            lease.release(finished=False)
        results += [entry.generate_variation(job_id, FRAMES[0], ENHANCED, index) for index in (2, 3, 4)]
        wait_until(lambda: reads, timeout_s=10)  # the siblings' bound passed: read once, complete
        assert ended == [] and reads == [(1, 4, 0, False)]
        scored = entry.score_variations(results, job_id, FRAMES[0])
        entry.select_variation(scored, job_id, FRAMES[0], ENHANCED)
        holder.join(30)
    assert ended == ["next round enqueued"] and len(reads) == 1


def test_a_hold_ends_when_its_job_closes_not_at_its_bound(enqueued_job, monkeypatch):
    """A cancel, and the finalize, wake the holds waiting for the job's next round with a 'closed'
    token: no next round comes, so they end then, without reading the round again."""
    from framefleet.tasks import entry
    from framefleet.tasks.coordination.slot_hold import hold_slot

    job_id, settings = enqueued_job
    state = Job(job_id)
    settings(SLOT_HOLD_SIBLINGS_S="60", SLOT_HOLD_S="60")  # far longer than the test waits
    for index in (1, 2, 3, 4):
        entry.generate_variation(job_id, FRAMES[0], ENHANCED, index)
    before = state.rounds.hold_view(FRAMES[0], 0, ENHANCED, 4)
    assert before == (1, 4, 0, False)  # complete, open: a hold waits up to SLOT_HOLD_S for round 2
    hold_view = Rounds.hold_view
    for close in (lambda: state.cancel(0), state.mark_finalized):
        ended, reads = [], []
        with monkeypatch.context() as patch:
            patch.setattr(Rounds, "hold_view", lambda *args, reads=reads: reads.append(args) or hold_view(*args))
            holders = [threading.Thread(target=lambda ended=ended: ended.append(
                hold_slot(job_id, FRAMES[0], 0, ENHANCED, 4, before)["ended"])) for _ in range(2)]
            for holder in holders:
                holder.start()
            wait_until(lambda: sum(client["cmd"] == "blpop" for client in state.r.client_list()) == 2, timeout_s=10)
            close()
            for holder in holders:
                holder.join(30)
        assert ended == ["job closed", "job closed"] and reads == []
        assert state.rounds.enqueued() == 1  # the wake-up counts no round
        state.r.delete(state.keys.round_wake(2), state.keys.cancelled, state.keys.finalized)


def test_a_running_job_keeps_its_slots_between_frames(celery_app, fleet_for_test, tmp_path):
    """One round fills the images worker: while the first job runs, no other job's first frame
    gets a slot in the gaps between its frames. (Without holding it does: the gap after every
    frame hands the freed slots to the jobs waiting in the new-job list.) The holds wait up to a
    minute: the job finishes in time only because each hold starts after its variation's result
    is counted in the chord, so scoring and selection go on and the next round ends the holds."""
    store = open_store(f"file://{tmp_path / 'artifacts'}")
    # Waits far longer than the test's deadline: a hold that kept the chord from completing would
    # end only by its deadline, 3 × 60 s for the first job's 3 hand-overs.
    fleet_for_test({"FRAMEFLEET_STORE_URL": store.url, "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": "0.4",
                    "FRAMEFLEET_SLOT_HOLD_S": "60", "FRAMEFLEET_SLOT_HOLD_SIBLINGS_S": "60"},
                   shapes={"images": ("threads", 4)})
    first = submit_job(celery_app, "storyboard", storyboard_request(unique_id("keeps"), 2))
    wait_until(lambda: job_status(first).stage in ("generate", "score", "done"), timeout_s=60)
    others = [submit_job(celery_app, "storyboard", storyboard_request(unique_id("waits"), 1)) for _ in range(3)]
    for job_id in [first, *others]:
        assert wait_for_job(job_id, timeout_s=150).outcome == "succeeded"

    manifests = {job_id: json.loads(store.get(f"jobs/{job_id}/manifest.json")) for job_id in [first, *others]}
    first_frames = manifests[first]["frames"]
    last_round_started = min(start for start, _ in first_frames[-1]["timings"]["variations"])
    others_started = [start for job_id in others for start, _ in manifests[job_id]["frames"][0]["timings"]["variations"]]
    assert len(others_started) == 12
    assert all(start > last_round_started for start in others_started)
    # ... although they were waiting for a slot during the first job's gaps
    assert max(manifests[job_id]["frames"][0]["timings"]["enqueued"] for job_id in others) < last_round_started
    assert len(first_frames) == 4
