"""Two copies of every step at once — a redelivery, a resume, a watchdog re-drive: the second copy
waits for the first copy's result or exits; nothing is paid twice and no stale record is written.

The step tests run the task functions themselves in two racing threads of this process, on the
real test Redis and a real store (no Celery eager mode: nothing is enqueued through them except
the follow-up steps, which are purged). The fleet test races duplicate messages and resumes
against a running job on real workers.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.coordination.leases import Lease
from framefleet.tasks.job.frames import StaleWrite
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import FrameRecord
from framefleet.tasks.job.states import FrameState, PromptSource
from framefleet.workers.client import job_status, submit_job, wait_for_job

from tests.helpers import create_here, purge_queues, storyboard_request, unique_id

ENHANCED = PromptSource.ENHANCED

pytestmark = pytest.mark.integration


def race(step, *args, copies: int = 2) -> list:
    """Run ``step(*args)`` in ``copies`` threads released at the same instant; their results."""
    barrier = threading.Barrier(copies)
    results: list = [None] * copies
    errors: list = []

    def run(slot: int) -> None:
        barrier.wait()
        try:
            results[slot] = step(*args)
        except BaseException as error:  # noqa: BLE001 — reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def test_every_step_raced_by_a_second_copy_runs_once(local_steps):
    from framefleet.tasks import entry

    job_id = create_here("storyboard", storyboard_request(unique_id("race"), 1))
    state = Job(job_id)
    frame = "clip_001_start"

    enhanced = race(entry.enhance_prompt, job_id, frame)
    record = state.frames.get(frame)
    assert enhanced[0] == enhanced[1] and record.enhanced_prompt is not None
    assert state.progress.read().prompts_enhanced == 1  # counted once
    assert state.ledger.costs()["total"]["llm_calls"] == 2 * record.enhancement.iterations  # each round paid once
    # the ledger stores the frame's counters only; the job's total is their sum, made on read
    assert not [field for field in state.r.hkeys(state.keys.cost) if field.startswith("total:")]
    assert state.ledger.costs()["total"] == state.ledger.costs()[frame]  # the only frame that paid yet

    variations = race(entry.generate_variation, job_id, frame, ENHANCED, 1)
    assert variations[0] == variations[1] and variations[0]["key"]
    assert [c["ledger_key"] for c in state.ledger.offline_calls()] == [f"{variations[0]['key']}#0"]  # paid once

    results = [variations[0], {"index": 2, "prompt_source": ENHANCED, "error": "provider said no"}]
    scored = race(entry.score_variations, results, job_id, frame)
    assert scored[0] == scored[1]  # the second copy returned the first copy's stored result

    race(entry.select_variation, scored[0], job_id, frame, ENHANCED)
    record = state.frames.get(frame)
    assert record.status == "succeeded" and record.selected.index == 1
    assert record.fallbacks == ["variation 2 failed: provider said no"]  # written once, not twice
    assert len(record.variations) == 2

    for name in ("clip_001_end",):  # settle the rest so finalize has a whole job
        state.frames.transition(name, FrameState.SKIPPED, expect=lambda r: True)
    finished = race(entry.finalize_job, job_id)
    assert finished[0] == finished[1] and finished[0]["status"] == "partial"
    assert state.progress.read().state == "done"
    assert json.loads(local_steps.get(f"jobs/{job_id}/manifest.json"))["status"] == "partial"
    assert state.leases.running_steps() == []  # every step finished


def test_a_closed_job_starts_no_step_and_keeps_no_lease(local_steps):
    from framefleet.tasks import entry

    job_id = create_here("storyboard", storyboard_request(unique_id("closed"), 1))
    state = Job(job_id)
    frame = "clip_001_start"
    entry.enhance_prompt(job_id, frame)
    assert state.frames.get(frame).state is FrameState.GENERATING  # its round was enqueued
    state.cancel(0)
    assert entry.generate_variation(job_id, frame, ENHANCED, 1)["error"] == "cancelled"
    assert state.ledger.offline_calls() == []  # nothing paid
    scored = entry.score_variations([{"index": 1, "prompt_source": ENHANCED, "error": "cancelled"}], job_id, frame)
    assert scored["scorer"] is None and state.rounds.scored(frame, 0, ENHANCED) is None
    entry.select_variation(scored, job_id, frame, ENHANCED)
    assert state.frames.get(frame).state is FrameState.GENERATING  # nothing selected
    assert state.leases.running_steps() == []  # none is held or left in the index


def test_a_stale_record_is_never_written_back(local_steps):
    from framefleet.tasks import entry

    job_id = create_here("storyboard", storyboard_request(unique_id("stale"), 1))
    state = Job(job_id)
    entry.enhance_prompt(job_id, "clip_001_start")
    before = state.frames.get("clip_001_start")

    def late_enhancement(record: FrameRecord) -> None:  # what a late duplicate would try
        record.enhanced_prompt = "stale"

    # A late copy of the enhancement: the frame has moved on (ready, or already generating).
    with pytest.raises(StaleWrite):
        state.frames.transition("clip_001_start", FrameState.READY, late_enhancement,
                                expect=lambda r: r.state is FrameState.WAITING)
    assert state.frames.get("clip_001_start") == before
    # A transition the table does not allow is refused even where the step expects nothing.
    with pytest.raises(StaleWrite, match="cannot become"):
        state.frames.transition("clip_001_start", FrameState.WAITING, late_enhancement, expect=lambda r: True)
    assert state.frames.get("clip_001_start") == before

    # Concurrent compare-and-set updates of one record all land (each retried on a conflict); a
    # round re-sent (GENERATING → GENERATING) is the legal self-transition.
    for step in (FrameState.READY, FrameState.GENERATING):
        state.frames.transition("clip_001_end", step, expect=lambda r: True)

    def add_warning(number: int):
        return lambda: state.frames.transition("clip_001_end", FrameState.GENERATING,
                                               lambda r: r.warnings.append(f"w{number}"), expect=lambda r: True)

    threads = [threading.Thread(target=add_warning(n)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(state.frames.get("clip_001_end").warnings) == [f"w{n}" for n in range(8)]


def test_resume_leaves_queued_steps_alone_and_re_sends_lost_ones(local_steps, celery_app, monkeypatch):
    from framefleet.tasks import entry
    from framefleet.tasks.coordination import recovery
    from framefleet.tasks.coordination.broker import queued_tasks
    from framefleet.tasks.coordination.dispatch import dispatch_ready
    from framefleet.tasks.coordination.recovery import resume

    job_id = create_here("storyboard", storyboard_request(unique_id("resume-queued"), 1))
    state = Job(job_id)
    frames = ["clip_001_start", "clip_001_end"]

    def queued() -> list[tuple[str, list]]:
        return sorted((task.name, task.args) for task in queued_tasks(job_id))

    # No worker consumes here: both enhancements wait in the llm queue and hold no lease.
    waiting = queued()
    assert waiting == sorted(("framefleet.prompts.enhance", [job_id, frame]) for frame in frames)
    assert resume(state) == "running" and queued() == waiting  # queued is not lost: nothing sent
    purge_queues(celery_app)  # the broker lost them
    assert resume(state) == "enhance clip_001_start, enhance clip_001_end" and queued() == waiting

    for frame in frames:  # the enhancements run here; the first frame's round is enqueued
        entry.enhance_prompt(job_id, frame)
    generations = [("framefleet.images.generate_variation", [job_id, frames[0], ENHANCED, index]) for index in range(1, 5)]
    waiting = queued()
    assert [task for task in waiting if task[0] != "framefleet.prompts.enhance"] == generations
    assert resume(state) == "running" and queued() == waiting
    purge_queues(celery_app)
    assert resume(state) == "clip_001_start" and queued() == generations

    # The next frame's own enhancement, holding its lease with its prompt stored, is enqueueing
    # that frame itself: resume sends nothing. A later frame's enhancement does not count, nor a
    # dead one (its lease gone): resume sends the round.
    purge_queues(celery_app)
    later = Lease(state, f"enhance:{frames[1]}")
    assert later.acquire()
    assert resume(state) == "clip_001_start" and queued() == generations
    later.release(finished=True)
    purge_queues(celery_app)
    lease = Lease(state, f"enhance:{frames[0]}")
    assert lease.acquire()
    assert resume(state) == "running" and queued() == []
    lease.release(finished=False)
    assert resume(state) == "clip_001_start" and queued() == generations
    # One that sends the round and finishes just after resume's first broker read: still sent once.
    purge_queues(celery_app)

    def read_then_the_enhancement_sends(job: str):
        tasks = read_broker(job)
        monkeypatch.setattr(recovery, "queued_tasks", read_broker)
        dispatch_ready(state, force=True)
        return tasks

    read_broker = recovery.queued_tasks
    monkeypatch.setattr(recovery, "queued_tasks", read_then_the_enhancement_sends)
    assert resume(state) == "running" and queued() == generations

    # Scoring and selection wait with the previous step's result before the job id (a chord body,
    # a chain link): still found, still not re-sent.
    for task, args in (("framefleet.scoring.score_variations", ([], job_id, frames[0])),
                       ("framefleet.frames.select", ({}, job_id, frames[0], ENHANCED))):
        purge_queues(celery_app)
        celery_app.signature(task, args=args).apply_async()
        waiting = queued()
        assert [name for name, _ in waiting] == [task]
        assert resume(state) == "running" and queued() == waiting


def test_the_watchdog_sends_the_frame_an_enhancement_died_enqueueing(local_steps, celery_app, monkeypatch):
    """An enhancement that died after storing its prompt may have taken the next frame (READY →
    GENERATING) with the round unsent (a re-run would find it taken): its re-drive sends the round
    itself, once. With a round in flight it re-sends the enhancement instead, which sends nothing more."""
    from framefleet.config.settings import get_settings
    from framefleet.tasks import entry
    from framefleet.tasks.coordination.broker import queued_tasks
    from framefleet.tasks.coordination.dispatch import dispatch_ready
    from framefleet.tasks.coordination.recovery import redrive_dead_steps
    from framefleet.tasks.job.leases import take_dead_leases
    from framefleet.tasks.steps.enhance import enhance_frame

    monkeypatch.setenv("FRAMEFLEET_MAX_REDRIVES", "10")  # the same step dies here three times
    get_settings.cache_clear()
    job_id = create_here("storyboard", storyboard_request(unique_id("dead-dispatch"), 1))
    state = Job(job_id)
    frame = "clip_001_start"
    purge_queues(celery_app)

    def queued(name: str) -> list[list]:
        return sorted(task.args for task in queued_tasks(job_id) if task.name == name)

    def enhancement_dies(took_the_frame: bool) -> None:
        lease = Lease(state, f"enhance:{frame}")
        assert lease.acquire()
        if took_the_frame:
            state.frames.transition(frame, FrameState.GENERATING, lambda r: setattr(r, "round", ENHANCED),
                                    expect=lambda r: r.state is FrameState.READY)
        lease.release(finished=False)  # its worker died: the lease is gone, the step still listed

    enhance_frame(state, frame)  # the prompt is stored: the frame is ready
    one_round = [[job_id, frame, ENHANCED, index] for index in range(1, 5)]
    enhancement_dies(took_the_frame=True)  # after taking the frame, before sending its round
    assert redrive_dead_steps(state, take_dead_leases()[job_id]) == [f"enhance:{frame}"]
    assert queued("framefleet.images.generate_variation") == one_round
    assert queued("framefleet.prompts.enhance") == []

    purge_queues(celery_app)
    state.frames.transition(frame, FrameState.READY, expect=lambda r: r.state is FrameState.GENERATING)
    enhancement_dies(took_the_frame=False)  # before taking it: the re-drive takes it, nobody sends twice
    assert redrive_dead_steps(state, take_dead_leases()[job_id]) == [f"enhance:{frame}"]
    assert dispatch_ready(state) is None
    assert queued("framefleet.images.generate_variation") == one_round

    enhancement_dies(took_the_frame=False)  # now with the frame's round waiting in the broker
    assert redrive_dead_steps(state, take_dead_leases()[job_id]) == [f"enhance:{frame}"]
    assert queued("framefleet.prompts.enhance") == [[job_id, frame]]
    entry.enhance_prompt(job_id, frame)
    assert queued("framefleet.images.generate_variation") == one_round


def test_a_new_jobs_round_is_admitted_in_one_piece(local_steps, celery_app, redis_server):
    import redis
    from framefleet.config.celery import broker_lists
    from framefleet.tasks import entry
    from framefleet.tasks.coordination.broker import admit_round, decode_message

    jobs = [create_here("storyboard", storyboard_request(unique_id("admit"), 1)) for _ in range(2)]
    purge_queues(celery_app)  # their enhancements run here
    for job_id in jobs:
        entry.enhance_prompt(job_id, "clip_001_start")  # enqueues the first frame at the new-job priority
    broker = redis.Redis.from_url(redis_server.url)

    def served(name: str) -> list[tuple[str, int]]:
        """The list's (job, variation) in the order workers take them (kombu pops the right end)."""
        tasks = (decode_message(raw, unacked=False) for raw in reversed(broker.lrange(name, 0, -1)))
        return [(task.args[0], task.args[3]) for task in tasks
                if task is not None and task.name == "framefleet.images.generate_variation"]

    first, second = ([(job_id, index) for index in range(1, 5)] for job_id in jobs)
    served_first, *_, new_jobs = broker_lists("images")
    assert served(served_first) == [] and served(new_jobs) == first + second
    taken = json.loads(broker.rpop(new_jobs))  # a worker takes the first job's first variation
    assert admit_round("images", taken["headers"]["group"]) == 3
    assert served(served_first) == first[1:] and served(new_jobs) == second  # served next, in order
    assert admit_round("images", taken["headers"]["group"]) == 0  # nothing copied or lost


def test_a_round_records_its_task_ids_with_the_transition_that_starts_it(local_steps, celery_app, redis_server):
    """Every task a round sends (its variations, scoring and selection) has its id recorded before
    it is sent, so a cancel can revoke it; a second start of the round is refused and records none."""
    import base64

    import redis
    from framefleet.config.celery import broker_lists
    from framefleet.tasks import entry
    from framefleet.tasks.coordination.dispatch import enqueue_frame

    job_id = create_here("storyboard", storyboard_request(unique_id("ids"), 1))
    purge_queues(celery_app)  # its enhancements run here
    state = Job(job_id)
    enhancements = state.ledger.task_ids()
    entry.enhance_prompt(job_id, "clip_001_start")  # enqueues the first frame's round
    broker, sent = redis.Redis.from_url(redis_server.url), set()
    for name in broker_lists("images"):
        for raw in broker.lrange(name, 0, -1):
            message = json.loads(raw)
            steps_after = json.loads(base64.b64decode(message["body"]))[2]["chord"]  # each variation carries them
            sent |= {message["headers"]["id"], *(step["options"]["task_id"] for step in steps_after["kwargs"]["tasks"])}
    recorded = state.ledger.task_ids() - enhancements
    assert len(sent) == 4 + 2 and sent <= recorded  # 4 variations, scoring, selection

    views = state.frames.views()
    with pytest.raises(StaleWrite):  # generating already: refused, and nothing recorded
        enqueue_frame(Job(job_id), views, "clip_001_start")
    assert state.ledger.task_ids() - enhancements == recorded


def test_a_rounds_task_ids_are_recorded_by_its_transition_before_anything_is_sent(local_steps, celery_app,
                                                                                 monkeypatch):
    """The ids are the transition's to record: a send that fails finds them recorded (a cancel
    racing the send revokes them), and the frame is ready again for the step's re-drive."""
    from framefleet.tasks import entry
    from framefleet.tasks.coordination import dispatch

    job_id = create_here("storyboard", storyboard_request(unique_id("ids-first"), 1))
    purge_queues(celery_app)
    state = Job(job_id)
    enhancements = state.ledger.task_ids()

    def broker_gone(*args) -> None:
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(dispatch, "send_chord", broker_gone)
    with pytest.raises(ConnectionError):
        entry.enhance_prompt(job_id, "clip_001_start")  # its dispatch starts the first round
    assert len(state.ledger.task_ids() - enhancements) == 4 + 3  # variations, scoring, judge, selection
    assert state.frames.get("clip_001_start").state is FrameState.READY


def test_duplicate_messages_and_resumes_during_a_job_pay_nothing_twice(celery_app, fleet_for_test, tmp_path):
    store = open_store(f"file://{tmp_path / 'artifacts'}")
    fleet_for_test({"FRAMEFLEET_STORE_URL": store.url, "FRAMEFLEET_OFFLINE_LLM_LATENCY_S": "0.1",
                    "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": "0.5"})
    job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("dup"), 2))
    state = Job(job_id)
    frames = [f.name for f in state.spec.plan.frames]
    # During enhancement: a second copy of every enhancement, and an operator resuming twice.
    for frame in frames:
        celery_app.send_task("framefleet.prompts.enhance", args=[job_id, frame])
    for _ in range(2):
        celery_app.send_task("framefleet.jobs.resume", args=[job_id])
    # During frame 1's generation: a second copy of each variation, and two more resumes.
    deadline = time.monotonic() + 60
    while state.frames.get(frames[0]).timings.enqueued is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for index in range(1, 5):
        celery_app.send_task("framefleet.images.generate_variation", args=[job_id, frames[0], ENHANCED, index])
    for _ in range(2):
        celery_app.send_task("framefleet.jobs.resume", args=[job_id])

    status = wait_for_job(job_id, timeout_s=120)
    manifest = json.loads(store.get(f"jobs/{job_id}/manifest.json"))
    assert status.outcome == manifest["status"] == "succeeded"
    records = {f["name"]: f for f in manifest["frames"]}
    for previous, frame in zip(frames, frames[1:]):  # every chained frame chains from its predecessor
        assert records[previous]["selected"]["frame_key"] in records[frame]["inputs"]
    ledger = [c["ledger_key"] for c in state.ledger.offline_calls()]
    assert len(ledger) == len(set(ledger)) == 4 * len(frames)  # every image paid exactly once
    assert manifest["cost"]["total"]["llm_calls"] == sum(2 * f["enhancement"]["iterations"] for f in manifest["frames"])
    time.sleep(2.0)  # late duplicates have run by now: nothing flips back
    assert job_status(job_id).state == "done"
    assert json.loads(store.get(f"jobs/{job_id}/manifest.json")) == manifest
    assert all(r.status == "succeeded" for r in state.frames.all().values())
