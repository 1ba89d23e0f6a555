"""The job record a main app and operators read, on the real test Redis: progress that never goes
back, a finished job off the active list the moment it is done, steps that outlive their job
recreating nothing, and the job list bounded by what it returns.

The steps run in this process (``local_steps``: no Celery eager mode; follow-up messages they
enqueue are purged)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from framefleet.tasks.job.errors import JobNotFound, RequestError
from framefleet.tasks.job.frames import FrameView, FrameViews, StaleWrite
from framefleet.tasks.job.keys import ACTIVE_JOBS, PARKED_JOBS, RECENT_JOBS
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import FrameRecord, Selection
from framefleet.tasks.job.redis import ScriptCall, chain
from framefleet.tasks.job.states import FrameState, NoteKind, PromptSource

from tests.contracts import check
from tests.helpers import create_here, purge_queues, storyboard_request, unique_id, wait_until

ENHANCED = PromptSource.ENHANCED
pytestmark = pytest.mark.integration


def test_percent_never_goes_back_within_a_revision(local_steps):

    job_id = create_here("storyboard", storyboard_request(unique_id("percent"), 2))
    state = Job(job_id)
    pubsub = state.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"framefleet:job:{job_id}:events")
    pubsub.get_message(timeout=1)  # the subscription is in place before anything is published
    # The first frame's generation reports 10%; a later frame's enhancement then reports 5%.
    state.progress.frame_reached_call("storyboard", "generate", "clip_001_start", 0, 4).run(state.r)
    state.progress.prompt_enhanced_call("storyboard", 4).run(state.r)
    state.progress.prompt_enhanced_call("storyboard", 4).run(state.r)
    assert state.progress.read().percent == 10.0
    events, deadline = [], time.monotonic() + 10
    while len(events) < 3 and time.monotonic() < deadline:
        if (message := pubsub.get_message(timeout=0.5)) is not None:
            events.append(message)
    pubsub.close()
    published = [json.loads(m["data"]) for m in events]
    for event in published:
        check("event", event)
    assert [event["percent"] for event in published] == [10.0, 10.0, 10.0]


def test_a_chain_names_its_parts_and_refuses_a_nested_chain():
    """chain.lua reads each part's key and argument counts from the front of ARGV: a chain inside a
    chain would put its own counts where the outer chain expects its part's arguments."""
    transition, report = ScriptCall("swap_frame", ["f", "s"], ["a", "b"]), ScriptCall("write_status", ["s"], ["c"])
    chained = chain(transition, report)
    assert chained.name == "swap_frame+write_status" and chained.keys == ["f", "s", "s"]
    assert chained.args == [2, 2, 1, 1, "a", "b", "c"]
    with pytest.raises(ValueError, match="not nested"):
        chain(chained, report)


def test_a_refused_transition_reports_nothing(local_steps):
    """The status write chained after a frame's transition (chain.lua) runs only if the transition
    is made. Two copies store one frame's enhancement: the second read the frame before the first
    stored it, so its compare-and-set is refused in the script, and its report is not written;
    nor is the report of a transition that a closed job refuses."""
    job_id = create_here("storyboard", storyboard_request(unique_id("chained"), 2))
    first, second = Job(job_id), Job(job_id)
    waiting = lambda record: record.state is FrameState.WAITING  # noqa: E731
    second.frames.get("clip_001_start")  # its transition starts from this record, without a read: refused in the script
    first.frames.transition("clip_001_start", FrameState.READY, expect=waiting,
                            then=first.progress.prompt_enhanced_call("storyboard", 4))
    assert first.progress.read().prompts_enhanced == 1
    history = first.progress.history()
    with pytest.raises(StaleWrite, match="has moved on"):
        second.frames.transition("clip_001_start", FrameState.READY, expect=waiting,
                                 then=second.progress.prompt_enhanced_call("storyboard", 4))
    first.cancel(0)
    with pytest.raises(StaleWrite, match="closed"):
        first.frames.transition("clip_001_end", FrameState.READY, expect=waiting, while_open=True,
                                then=first.progress.prompt_enhanced_call("storyboard", 4))
    assert first.progress.read().prompts_enhanced == 1
    assert first.progress.history() == history
    assert first.frames.get("clip_001_end").state is FrameState.WAITING


def test_a_done_job_is_off_the_active_list_when_its_done_event_is_published(local_steps):
    """Status, active list and event change in one script: a revision started right after "done"
    can never be taken off the active list by the finalize before it."""
    from framefleet.tasks import entry

    job_id = create_here("storyboard", storyboard_request(unique_id("atomic"), 1))
    state = Job(job_id)
    for frame in ("clip_001_start", "clip_001_end"):
        state.frames.transition(frame, FrameState.SKIPPED, expect=lambda r: True)
    pubsub = state.progress.subscribe()
    pubsub.get_message(timeout=1)
    entry.finalize_job(job_id)
    deadline, active_at_done = time.monotonic() + 10, None
    while active_at_done is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message is not None and json.loads(message["data"])["state"] == "done":
            active_at_done = state.r.sismember(ACTIVE_JOBS, job_id)
    pubsub.close()
    assert active_at_done == 0


def test_events_keep_the_order_of_concurrent_writes(local_steps):
    """Writers racing on one job: the events a subscriber sees never show the percent going back,
    and each is JobEvent's JSON, text escaped."""
    job_id = create_here("storyboard", storyboard_request(unique_id("order"), 4))
    state = Job(job_id)
    pubsub = state.progress.subscribe()
    pubsub.get_message(timeout=1)
    writes_per_thread, threads = 40, 4

    def report(offset: int) -> None:
        writer = Job(job_id)
        for done in range(writes_per_thread):
            writer.progress.frame_reached_call("storyboard", "generate", f"clip_00{offset}_start",
                                               (done * threads + offset) // 20, 8).run(writer.r)

    workers = [threading.Thread(target=report, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    state.progress.write(message='a "quoted" revisión / note', current_frame=None)
    events, deadline = [], time.monotonic() + 20
    while len(events) < writes_per_thread * threads + 1 and time.monotonic() < deadline:
        if (message := pubsub.get_message(timeout=0.5)) is not None:
            events.append(json.loads(message["data"]))
    pubsub.close()
    for event in events:
        check("event", event)
    percents = [event["percent"] for event in events]
    assert len(events) == writes_per_thread * threads + 1
    assert percents == sorted(percents) and percents[-1] > percents[0]
    assert events[-1]["message"] == 'a "quoted" revisión / note' and events[-1]["frame"] is None
    status = state.progress.read()
    assert (events[-1]["state"], events[-1]["percent"], events[-1]["revision"]) == (
        status.state, status.percent, status.revision)


def test_a_transition_from_an_earlier_read_never_writes_past_a_newer_record(local_steps):
    """A transition starts from the record its Job read last, without reading again: when that
    record was replaced since (a write, or a revision's draft put beside it), the compare-and-set
    refuses it, and the transition goes on from the current record."""
    job_id = create_here("storyboard", storyboard_request(unique_id("earlier"), 1))
    first, other, frame = Job(job_id), Job(job_id), "clip_001_start"
    assert first.frames.get(frame).state is FrameState.WAITING
    other.frames.transition(frame, FrameState.SKIPPED, expect=lambda r: True, revision=1)  # a draft beside it
    with pytest.raises(StaleWrite):  # the current record (the draft) is no longer waiting
        first.frames.transition(frame, FrameState.READY, expect=lambda r: r.state is FrameState.WAITING)
    finished = json.loads(first.r.hget(first.keys.frames, frame))
    assert finished["state"] == FrameState.WAITING  # the finished record was not written past the draft

    second = "clip_001_end"
    assert first.frames.get(second).state is FrameState.WAITING
    other.frames.transition(second, FrameState.READY, expect=lambda r: True)  # replaced since first read it
    moved = first.frames.transition(second, FrameState.GENERATING, expect=lambda r: r.state is FrameState.READY)
    assert moved.state is FrameState.GENERATING and first.frames.get(second).state is FrameState.GENERATING


def test_a_lease_whose_outcome_read_fails_is_not_left_taken(local_steps):
    """The outcome read runs in the lease's transaction: when it fails, no lease is left held (nor
    in the index), so nothing waits for its expiry and the watchdog has nothing to re-drive."""
    import redis
    from framefleet.tasks.coordination.leases import Lease
    from framefleet.tasks.job.keys import LEASES
    from framefleet.tasks.steps.finalize import finalized

    job = Job(create_here("storyboard", storyboard_request(unique_id("badread"), 1)))
    lease = Lease(job, "enhance:clip_001_start")
    with pytest.raises(redis.ResponseError):
        lease.acquire(("HGET", job.keys.spec, "not a hash"))
    assert not job.r.exists(lease.key) and job.r.zscore(LEASES, lease.key) is None
    assert lease.acquire(job.frames.read_command("clip_001_start"))  # a good read: taken
    lease.release(finished=True)
    with pytest.raises(JobNotFound):  # a finalize waiting on a job that is gone fails at once
        finalized(Job(unique_id("gone")), 0).now(job.r)


def test_the_lease_index_holds_the_holders_deadline(local_steps):
    """A lease is indexed by when its holder's lease runs out: a copy that finds it held changes
    nothing in the index, and one that takes over from a holder that died moves the deadline on."""
    from framefleet.tasks.coordination.leases import Lease
    from framefleet.tasks.job.keys import LEASES

    job = Job(create_here("storyboard", storyboard_request(unique_id("deadline"), 1)))
    holder = Lease(job, "enhance:clip_001_start")
    assert holder.acquire()
    deadline = job.r.zscore(LEASES, holder.key)
    time.sleep(0.01)  # a later copy's deadline is later
    second = Lease(Job(job.id), holder.step)
    assert not second.acquire()
    assert job.r.get(holder.key) == holder.owner and job.r.zscore(LEASES, holder.key) == deadline
    job.r.delete(holder.key)  # the holder died: its key ran out, its entry waits for the watchdog
    assert second.acquire()
    assert job.r.get(holder.key) == second.owner and job.r.zscore(LEASES, holder.key) > deadline
    holder.release(finished=True)  # a former holder's release leaves the new holder's lease
    assert job.r.get(holder.key) == second.owner and job.r.zscore(LEASES, holder.key) is not None
    second.release(finished=True)
    assert not job.r.exists(holder.key) and job.r.zscore(LEASES, holder.key) is None


def test_a_lease_transaction_sent_again_finds_the_lease_it_took(local_steps):
    """A transaction that a lost reply sends again (redis-py retries it on a connection error)
    finds the lease it took: taken, on an open job; given back, once the job is closed. Another
    copy's is refused either way and leaves the lease alone."""
    from framefleet.tasks.job.keys import LEASES

    job = Job(create_here("storyboard", storyboard_request(unique_id("resent"), 1)))
    step, ttl_ms = "generate:clip_001_start/0/enhanced/1", 30_000
    key = job.keys.lease(step)
    assert job.leases.acquire(step, "mine", ttl_ms, while_open=True)[0] == 1
    assert job.leases.acquire(step, "mine", ttl_ms, while_open=True)[0] == 1  # the same, sent again
    assert job.leases.acquire(step, "another copy", ttl_ms, while_open=True)[0] == 0
    assert job.r.get(key) == "mine"
    job.cancel(0)
    assert job.leases.acquire(step, "another copy", ttl_ms, while_open=True)[0] == -1
    assert job.r.get(key) == "mine" and job.r.zscore(LEASES, key) is not None
    assert job.leases.acquire(step, "mine", ttl_ms, while_open=True)[0] == -1  # sent again, now closed
    assert not job.r.exists(key) and job.r.zscore(LEASES, key) is None


def test_the_write_that_stores_an_outcome_releases_only_its_owners_lease(local_steps):
    """A step without ``after`` hands its lease's release to the write that stores its outcome: one
    script stores the outcome and releases the lease, and only while this copy still holds it."""
    from framefleet.tasks.coordination.leases import Lease
    from framefleet.tasks.job.keys import LEASES
    from framefleet.tasks.job.records import VariationRecord

    job = Job(create_here("storyboard", storyboard_request(unique_id("outcome"), 1)))
    frame, enhanced = "clip_001_start", PromptSource.ENHANCED
    mine, theirs = Lease(job, f"generate:{frame}/0/enhanced/1"), Lease(job, f"generate:{frame}/0/enhanced/2")
    assert mine.acquire() and theirs.acquire()
    job.leases.finishing = mine
    job.rounds.save_variation(frame, 0, enhanced, VariationRecord(index=1, prompt_source=enhanced, error="x"), {})
    assert not job.r.exists(mine.key) and job.r.zscore(LEASES, mine.key) is None
    assert mine.released and job.leases.finishing is None

    late = Job(job.id)  # a copy whose lease was taken over: its write stores, the holder keeps the lease
    late.leases.finishing = Lease(late, theirs.step)
    late.rounds.save_variation(frame, 0, enhanced, VariationRecord(index=2, prompt_source=enhanced, error="x"), {})
    assert job.r.get(theirs.key) == theirs.owner and job.r.zscore(LEASES, theirs.key) is not None
    assert len(job.r.hkeys(job.keys.variations)) >= 2  # both records stored
    theirs.release(finished=True)  # the holder's own release, unaffected by the other copies'
    assert not job.r.exists(theirs.key) and job.r.zscore(LEASES, theirs.key) is None


def test_a_dispatch_that_enqueues_a_round_releases_its_steps_lease_as_it_counts_the_round(local_steps, monkeypatch):
    """A selection's ``after`` dispatches the next frame: the script that counts the round it
    enqueued (its last write) releases the selection's lease, with no release of its own; a copy
    whose lease was taken over leaves the holder's."""
    from framefleet.tasks import entry
    from framefleet.tasks.coordination.leases import Lease
    from framefleet.tasks.job.keys import LEASES
    from framefleet.tasks.job.leases import Leases

    job_id = create_here("storyboard", storyboard_request(unique_id("dispatching"), 1))
    job, frame, enhanced = Job(job_id), "clip_001_start", PromptSource.ENHANCED
    for name in (frame, "clip_001_end"):
        entry.enhance_prompt(job_id, name)
    scored = entry.score_variations([entry.generate_variation(job_id, frame, enhanced, index) for index in range(1, 5)],
                                    job_id, frame)
    releases, release = [], Leases.release
    monkeypatch.setattr(Leases, "release", lambda self, step, *args: releases.append(step) or release(self, step, *args))
    entry.select_variation(scored, job_id, frame, enhanced)
    step = f"select:{frame}/0/{enhanced}"
    assert job.rounds.enqueued() == 2  # the next frame's round was enqueued and counted
    assert not job.r.exists(job.keys.lease(step)) and job.r.zscore(LEASES, job.keys.lease(step)) is None
    assert step not in releases  # released by the round's count, not by a script of its own

    holder, late = Lease(job, "select:elsewhere"), Job(job_id)
    assert holder.acquire()
    late.leases.dispatching = Lease(late, holder.step)  # its lease was taken over
    late.rounds.count_round(wake=0)
    assert job.r.get(holder.key) == holder.owner and job.r.zscore(LEASES, holder.key) is not None
    holder.release(finished=True)


def test_a_round_is_not_started_once_the_job_is_closed(local_steps):
    """The READY → GENERATING transition that starts a round checks, in its own script, that the
    job is neither cancelled nor finalizing: a dispatch that read the job open earlier sends nothing."""
    job = Job(create_here("storyboard", storyboard_request(unique_id("closedround"), 1)))
    frame = "clip_001_start"
    job.frames.transition(frame, FrameState.READY, expect=lambda r: True)
    job.cancel(0)
    with pytest.raises(StaleWrite, match="closed"):
        job.frames.transition(frame, FrameState.GENERATING, while_open=True, expect=lambda r: True)
    assert Job(job.id).frames.get(frame).state is FrameState.READY  # nothing written
    job.r.delete(job.keys.cancelled)
    assert job.frames.transition(frame, FrameState.GENERATING, while_open=True,
                                 expect=lambda r: True).state is FrameState.GENERATING


def test_reads_beside_a_script_survive_redis_forgetting_its_scripts(local_steps):
    """A script with reads pipelined beside it (a transition a dispatch follows) loads itself again
    when Redis has lost its scripts (a restart, a failover), and its reads see its write."""
    job = Job(create_here("storyboard", storyboard_request(unique_id("noscript"), 1)))
    frame = "clip_001_start"
    job.r.script_flush()
    job.frames.transition(frame, FrameState.READY, expect=lambda r: True, read_after=(frame,))
    closed, views, records = job.frames.read_after_transition()
    assert closed is False and FrameView.load(views[frame]).state is FrameState.READY
    assert job.frames.parse(frame, records[frame]).state is FrameState.READY  # read with them
    assert job.frames.read_after_transition() is None  # used once


def test_what_a_step_reads_first_comes_with_its_lease_and_is_used_once(local_steps):
    """``run_step``'s prefetch: the spec and frame record read in the round trip that takes the
    lease are what the work's first read returns; its next read goes to Redis. A copy that could not
    take the lease at once, and took it over later, keeps nothing."""
    from framefleet.tasks.coordination.leases import Lease, Stored, wait_for

    job_id = create_here("storyboard", storyboard_request(unique_id("prefetch"), 1))
    frame, nothing_stored = "clip_001_start", Stored(("GET", "no-such-outcome"), lambda raw: raw)
    job = Job(job_id)
    result, lease = wait_for(nothing_stored, Lease(job, f"enhance:{frame}"), job.prefetch_spec_and_frame(frame))
    assert result is None and lease is not None
    Job(job_id).frames.transition(frame, FrameState.READY, expect=lambda r: True)  # moves on after the lease
    spec, record = job.spec_and_frame(frame)
    assert spec.job_id == job_id and record.state is FrameState.WAITING  # as read with the lease
    assert job.frames.get(frame).state is FrameState.READY  # then read afresh

    lease.release(finished=True)

    holder, waiter, taken = Lease(Job(job_id), f"select:{frame}"), Job(job_id), []
    assert holder.acquire()
    thread = threading.Thread(target=lambda: taken.append(wait_for(
        nothing_stored, Lease(waiter, f"select:{frame}"), waiter.prefetch_spec_and_frame(frame), poll_s=0.05)))
    thread.start()
    time.sleep(0.3)  # it waits on the holder
    holder.release(finished=False)  # the holder died without an outcome: the waiter takes over
    thread.join(10)
    (result, took), = taken
    assert result is None and took is not None
    assert waiter._spec is None  # a copy that waited reads afresh: nothing read ahead was kept
    took.release(finished=True)


def test_each_paid_llm_reply_is_counted_in_the_write_that_records_it(local_steps, monkeypatch):
    """A reply and what its call cost are one write: the count never lags behind what was paid.
    A call that fails (paid, no reply to record) is counted as the step ends."""
    from framefleet.tasks import entry
    from framefleet.tasks.providers.offline_llm import OfflinePromptAgents

    job_id = create_here("storyboard", storyboard_request(unique_id("llm-costs"), 1))
    state, frame = Job(job_id), "clip_001_start"
    engineer, counted_before_failing = OfflinePromptAgents.prompt_engineer, []

    def second_call_fails(self, prompt: str):
        if self.usage["llm_calls"] < 3:
            return engineer(self, prompt)
        counted_before_failing.append(state.ledger.costs()["total"]["llm_calls"])
        self.next_latency_s()  # the call is made (paid for), then fails
        raise RuntimeError("the LLM went away")

    monkeypatch.setattr(OfflinePromptAgents, "prompt_engineer", second_call_fails)
    entry.enhance_prompt(job_id, frame)
    assert state.frames.get(frame).enhancement.fallback  # the LLM stage failed: the original prompt
    assert counted_before_failing == [3]  # round 1's two replies and round 2's first, each with its reply
    assert state.ledger.costs()["total"]["llm_calls"] == 4  # and the failed call


def test_a_step_that_outlives_its_job_recreates_none_of_its_keys(local_steps):
    """A variation in flight when its job's keys vanish (expiry, a discard, FLUSHALL) stores its
    image and returns, but writes nothing back to Redis for a job that no longer exists."""
    from framefleet.tasks import entry

    job_id = create_here("storyboard", storyboard_request(unique_id("vanish"), 1))
    entry.enhance_prompt(job_id, "clip_001_start")
    state = Job(job_id)
    pattern = f"framefleet:job:{job_id}:*"
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            entry.generate_variation(job_id, "clip_001_start", ENHANCED, 1)
        except BaseException as error:  # noqa: BLE001 — reported below
            errors.append(error)

    worker = threading.Thread(target=generate)
    worker.start()
    wait_until(lambda: state.r.exists(f"framefleet:job:{job_id}:lease:generate:clip_001_start/0/{ENHANCED}/1"),
               timeout_s=10)
    state.r.delete(*state.r.keys(pattern))  # the job's state is gone while the image is being made
    worker.join(30)
    time.sleep(0.2)
    assert state.r.keys(pattern) == []
    with pytest.raises(JobNotFound, match="^job_id: no job"):  # a later step of the job refuses at once
        entry.score_variations([], job_id, "clip_001_start")
    assert state.r.keys(pattern) == []
    assert not errors or "no job" in str(errors[0])


def test_the_job_list_is_bounded_checked_and_lists_old_running_jobs(local_steps):
    from framefleet.tasks import entry

    old_running = create_here("storyboard", storyboard_request(unique_id("old-running"), 1))
    newer = [create_here("storyboard", storyboard_request(unique_id(f"newer{n}"), 1))
             for n in range(3)]
    for job_id in newer:
        Job(job_id).progress.write(state="done", stage="done", outcome="succeeded", active=False)
    # With ``active_only``, the newest active jobs are listed, not the active ones among the newest.
    active = [row["job_id"] for row in entry.list_jobs(True, 2)]
    assert old_running in active and not set(newer) & set(active)
    assert [row["job_id"] for row in entry.list_jobs(False, 3)] == newer[::-1]
    for row in entry.list_jobs(False, 3):
        check("result", [row], kind="list")
    for limit in (0, -5, 1_000_000, "5", True, 2.5):
        with pytest.raises(RequestError, match="^limit: expected a whole number from 1 to 1000"):
            entry.list_jobs(False, limit)
    with pytest.raises(RequestError, match="^active_only"):
        entry.list_jobs("yes", 5)


def test_the_recent_and_parked_lists_are_trimmed(local_steps):

    state = Job(unique_id("long-gone"))
    ttl = state.ttl
    state.r.zadd(RECENT_JOBS, {state.id: time.time() - ttl - 60})  # submitted before the job TTL
    state.r.hset(PARKED_JOBS, state.id, "parked long ago")
    job_id = create_here("storyboard", storyboard_request(unique_id("trim"), 1))
    assert state.r.zscore(RECENT_JOBS, state.id) is None
    Job(job_id).park("for the test")
    assert not state.r.hexists(PARKED_JOBS, state.id) and state.r.hget(PARKED_JOBS, job_id) == "for the test"
    assert 0 < state.r.ttl(RECENT_JOBS) <= ttl and 0 < state.r.ttl(PARKED_JOBS) <= ttl


def test_a_dispatch_reads_every_frames_view_and_only_the_record_it_starts(local_steps, frame_parses, celery_app):
    """A dispatch reads each frame's view (state, clip, selection) from the views hash, not its
    record: what it reads and parses does not grow with the records (a 64-frame job's settled
    records hold 200 KB), only the record of the frame it starts is read."""
    from framefleet.tasks.coordination.dispatch import dispatch_ready

    job = Job(create_here("storyboard", storyboard_request(unique_id("views"), 3)))
    bulky = "a note long enough to make its record large " * 500  # 22 KB
    for frame in ("clip_001_start", "clip_001_end", "clip_002_start"):
        job.frames.transition(frame, FrameState.SKIPPED, lambda record: record.add_note(NoteKind.QUALITY_LOW, bulky),
                              expect=lambda r: True)
    assert len(job.r.hget(job.keys.frames, "clip_001_start")) > 20_000
    sent_before, parsed_before = job.r.info("stats")["total_net_output_bytes"], len(frame_parses)
    assert dispatch_ready(Job(job.id)) is None  # clip_002_end waits for its enhancement
    assert len(frame_parses) == parsed_before  # no record parsed
    assert job.r.info("stats")["total_net_output_bytes"] - sent_before < 8_000  # the records hold 66 KB

    job.frames.transition("clip_002_end", FrameState.READY, expect=lambda r: True)
    parsed_before = len(frame_parses)
    assert dispatch_ready(Job(job.id)) == "clip_002_end"
    assert len(frame_parses) - parsed_before == 2  # its record, as read and in the transition's check
    assert Job(job.id).frames.get("clip_002_end").state is FrameState.GENERATING
    purge_queues(celery_app)


def test_each_frames_view_is_written_with_its_record(local_steps):
    """The views hash holds, field for field, the view of each record in the frames hash: through
    a run, a revision's drafts, a frame taken out of the revision, and the revision kept or dropped."""
    job = Job(create_here("storyboard", storyboard_request(unique_id("mirror"), 1)))
    start, end = "clip_001_start", "clip_001_end"

    def mirrored() -> None:
        records, views = job.r.hgetall(job.keys.frames), job.r.hgetall(job.keys.views)
        assert {name: FrameView.load(raw) for name, raw in views.items()} == {
            name: FrameView.of(FrameRecord.model_validate_json(raw)) for name, raw in records.items()}
        assert dict(Job(job.id).frames.views()) == dict(FrameViews.of_records(Job(job.id).frames.all()))

    def select(record: FrameRecord) -> None:
        record.selected = Selection(index=2, key=f"jobs/{job.id}/v2.png", frame_key=f"jobs/{job.id}/frames/x.png")

    mirrored()
    job.frames.transition(start, FrameState.READY, expect=lambda r: True)
    job.frames.transition(start, FrameState.GENERATING, expect=lambda r: True)
    job.frames.transition(start, FrameState.SUCCEEDED, select, expect=lambda r: True)
    job.frames.transition(end, FrameState.SKIPPED, expect=lambda r: True)
    mirrored()
    assert Job(job.id).frames.views()[start].selected_key == f"jobs/{job.id}/frames/x.png"
    for keep in (True, False):  # a revision's drafts, kept, then dropped
        job.frames.transition(start, FrameState.READY, revision=1, expect=lambda r: True)
        job.frames.transition(end, FrameState.WAITING, revision=1, expect=lambda r: True)
        mirrored()
        assert Job(job.id).frames.views()[end].state is FrameState.WAITING  # the draft's, over the finished
        assert job.frames.keep_finished(end)
        mirrored()
        assert Job(job.id).frames.views()[end].state is FrameState.SKIPPED
        assert job.frames.end_revision_call(keep).run(job.r) == [start]
        mirrored()
        assert Job(job.id).frames.views()[start].state is (FrameState.READY if keep else FrameState.SKIPPED)
        if keep:
            job.frames.transition(start, FrameState.SKIPPED, expect=lambda r: True)
    assert 0 < job.r.ttl(job.keys.views) <= job.ttl


def test_a_job_without_a_views_hash_has_its_views_made_from_its_records(local_steps):
    """A job created by a fleet version that kept no views (in flight through an upgrade): its
    dispatch reads the records, and a transition writes no views hash (it would have no expiry)."""
    from framefleet.tasks.coordination.dispatch import dispatch_ready

    job = Job(create_here("storyboard", storyboard_request(unique_id("noviews"), 1)))
    job.r.delete(job.keys.views)
    job.frames.transition("clip_001_start", FrameState.SKIPPED, expect=lambda r: True, read_after=())
    assert not job.r.exists(job.keys.views)
    assert dict(Job(job.id).frames.views()) == {"clip_001_start": (FrameState.SKIPPED, 1, None),
                                                "clip_001_end": (FrameState.WAITING, 1, None)}
    assert dispatch_ready(job) is None  # clip_001_end waits for its enhancement
    assert job.frames.end_revision_call(True).run(job.r) == [] and not job.r.exists(job.keys.views)


def test_a_waiting_copys_dispatch_starts_a_retry_from_the_record_as_read_now(local_steps, celery_app):
    """A second copy of a selection waits (polling where the outcome is stored) while the first
    stores RETRY; the dispatch it runs after finds the frame's record as it is now: the retry
    round uses the original prompt, not the round that failed."""
    from framefleet.tasks.coordination.dispatch import dispatch_ready
    from framefleet.tasks.steps import select

    job_id = create_here("storyboard", storyboard_request(unique_id("staleread"), 1))
    frame = "clip_001_start"
    first = Job(job_id)
    first.frames.transition(frame, FrameState.READY, expect=lambda r: True)
    first.frames.transition(frame, FrameState.GENERATING, lambda r: setattr(r, "round", ENHANCED),
                            expect=lambda r: True)
    waiter = Job(job_id)
    stored = select.selected(waiter, frame, 0, ENHANCED.value)
    assert stored.now(waiter.r) is None  # polled while the first copy works
    first.frames.transition(frame, FrameState.RETRY, expect=lambda r: True)  # the first copy's outcome
    assert stored.now(waiter.r) is True
    assert dispatch_ready(waiter) == frame
    purge_queues(celery_app)
    assert Job(job_id).frames.get(frame).round is PromptSource.ORIGINAL


def test_resume_writes_the_frames_views_again_from_their_records(local_steps, celery_app):
    """Views that a fleet version keeping none left out of step (a rolling upgrade: its transitions
    write records only), or never wrote, are written again from the records by a resume."""
    from framefleet.tasks.coordination.recovery import resume

    job = Job(create_here("storyboard", storyboard_request(unique_id("rewrite"), 1)))
    purge_queues(celery_app)  # its enhancements
    job.frames.transition("clip_001_end", FrameState.SKIPPED, expect=lambda r: True)
    job.r.hset(job.keys.views, "clip_001_end", FrameView(FrameState.WAITING, 1, None).dump())  # out of step
    ttl = job.r.pttl(job.keys.frames)
    resume(Job(job.id))
    purge_queues(celery_app)
    assert Job(job.id).frames.views()["clip_001_end"].state is FrameState.SKIPPED
    assert 0 < job.r.pttl(job.keys.views) <= ttl
    job.r.delete(job.keys.views)  # a job from a fleet version that kept none
    resume(Job(job.id))
    purge_queues(celery_app)
    assert {name: FrameView.load(raw) for name, raw in job.r.hgetall(job.keys.views).items()} == {
        "clip_001_start": (FrameState.WAITING, 1, None), "clip_001_end": (FrameState.SKIPPED, 1, None)}
