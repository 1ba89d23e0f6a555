"""Scoring batched across frames.

The step tests: the score task this process runs leads a pass over the score tasks waiting on the
gpu queue (no worker takes them here), on the real test Redis. The rounds are generated here
(offline images); the waiting tasks are real messages on the gpu queue, sent as a chord body is.
Each checks what the leader may and may not take, and what it leaves behind: stored outcomes and
free leases, or leases for the watchdog. The fleet test: jobs whose score tasks queue up together
on a real fleet are scored in fewer passes than frames, with the selections of unbatched scoring.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from framefleet.config.celery import SCORE_VARIATIONS
from framefleet.config.settings import get_settings
from framefleet.scoring import create_scorer, overall_score
from framefleet.tasks.artifacts.images import decode_image
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.coordination.broker import waiting_tasks
from framefleet.tasks.coordination.leases import Lease
from framefleet.tasks.job.keys import LEASES
from framefleet.tasks.job.leases import take_dead_leases
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.states import PromptSource
from framefleet.workers.client import submit_job, wait_for_job

from tests.helpers import create_here, purge_queues, references_request, storyboard_request, unique_id, wait_until

pytestmark = pytest.mark.integration

FRAME, ENHANCED = "clip_001_start", PromptSource.ENHANCED


@pytest.fixture
def rounds(local_steps, celery_app, monkeypatch):
    """Makes a one-frame round ready to score: (job id, its variations' records)."""
    from framefleet.tasks import entry
    from framefleet.tasks.providers import image_generator

    monkeypatch.setenv("FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S", "0")
    monkeypatch.setenv("FRAMEFLEET_OFFLINE_LLM_LATENCY_S", "0")
    get_settings.cache_clear()
    image_generator.cache_clear()
    purge_queues(celery_app)

    def ready() -> tuple[str, list[dict]]:
        job_id = create_here("storyboard", storyboard_request(unique_id("batch"), 1))
        entry.enhance_prompt(job_id, FRAME)
        return job_id, [entry.generate_variation(job_id, FRAME, ENHANCED, index) for index in range(1, 5)]

    return ready


def queue_score(app, job_id: str, results: list[dict]) -> None:
    """The round's score task, waiting on the gpu queue as its chord sent it."""
    app.signature(SCORE_VARIATIONS, args=(results, job_id, FRAME), kwargs={"revision": 0}).apply_async()


def scored(job_id: str) -> dict | None:
    return Job(job_id).rounds.scored(FRAME, 0, ENHANCED)


def lead(job_id: str) -> str:
    return f"{job_id}/{FRAME}/0/{ENHANCED}"


def test_rounds_waiting_on_the_gpu_queue_are_scored_in_the_leaders_pass(rounds, celery_app):
    from framefleet.tasks import entry
    from framefleet.tasks.coordination.score_batch import round_of
    from framefleet.tasks.steps import score

    jobs = [rounds() for _ in range(4)]
    for job_id, results in jobs[1:]:
        queue_score(celery_app, job_id, results)
    leader_id, leader_results = jobs[0]
    result = entry.score_variations(leader_results, leader_id, FRAME)

    outcomes = {job_id: scored(job_id) for job_id, _ in jobs}
    assert result == outcomes[leader_id]
    for job_id, _ in jobs:
        assert outcomes[job_id]["batch"] == {"lead": lead(leader_id), "frames": 4, "images": 16}
        assert Job(job_id).leases.running_steps() == []  # every lease released as finished
    for job_id, results in jobs[1:]:  # a worker takes the waiting task: the stored outcome, at once
        assert entry.score_variations(results, job_id, FRAME) == outcomes[job_id]
    for job_id, results in jobs:  # what each round gets scored alone
        variations, _ = round_of(results)
        (alone,) = score.score_rounds([score.scoring_round(Job(job_id), FRAME, 0, ENHANCED, variations)])
        assert alone["batch"] == {"lead": lead(job_id), "frames": 1, "images": 4}
        assert {key: alone[key] for key in ("variations", "scorer", "error", "notes")} == \
            {key: outcomes[job_id][key] for key in ("variations", "scorer", "error", "notes")}
        assert all(v["scores"]["overall"] is not None and v["thumbnail_key"] for v in alone["variations"])


def test_a_round_its_own_task_must_run_is_not_taken(rounds, celery_app):
    """Not taken: a round of a cancelled job, one whose lease another copy holds, a duplicate of
    the leader's own round. Each is left exactly as it was: nothing stored, no lease changed."""
    from framefleet.tasks import entry

    (leader, leader_results), cancelled, held, free = (rounds() for _ in range(4))
    queue_score(celery_app, leader, leader_results)  # a redelivered copy of the leader's own round
    for job_id, results in (cancelled, held, free):
        queue_score(celery_app, job_id, results)
    Job(cancelled[0]).cancel(0)
    other_copy = Lease(Job(held[0]), f"score:{FRAME}/0/{ENHANCED}", while_open=True)
    assert other_copy.acquire()
    try:
        result = entry.score_variations(leader_results, leader, FRAME)
        assert result["batch"] == {"lead": lead(leader), "frames": 2, "images": 8}
        assert scored(free[0])["batch"] == result["batch"]
        assert scored(cancelled[0]) is None and Job(cancelled[0]).leases.running_steps() == []
        assert scored(held[0]) is None
        assert Job(held[0]).leases.holders([f"score:{FRAME}/0/{ENHANCED}"]) == [other_copy.owner]
    finally:
        other_copy.release(finished=True)


def test_a_round_nobody_needs_is_not_taken(rounds, celery_app):
    """Not taken either: a round whose message was revoked (a cancel; the worker's revoked ids),
    and a round of a revision that is not the job's. Nothing is stored for them."""
    from celery.worker import state
    from framefleet.tasks import entry

    (leader, leader_results), (revoked, revoked_results), (other, other_results) = rounds(), rounds(), rounds()
    sent = celery_app.signature(SCORE_VARIATIONS, args=(revoked_results, revoked, FRAME),
                                kwargs={"revision": 0}).apply_async()
    state.revoked.add(sent.id)  # as this worker's revoke handler records it
    celery_app.signature(SCORE_VARIATIONS, args=(other_results, other, FRAME), kwargs={"revision": 3}).apply_async()
    try:
        result = entry.score_variations(leader_results, leader, FRAME)
    finally:
        state.revoked.discard(sent.id)
    assert result["batch"]["frames"] == 1
    assert scored(revoked) is None and Job(other).rounds.scored(FRAME, 3, ENHANCED) is None
    assert Job(revoked).leases.running_steps() == [] == Job(other).leases.running_steps()


def test_a_pass_that_fails_leaves_every_round_it_took_to_the_watchdog(rounds, celery_app, monkeypatch):
    """While the pass runs, each round it took holds its lease in the fleet's index, with a
    deadline: a leader that dies stops renewing them and the watchdog re-drives those rounds once
    they run out. A pass that raises leaves them due at once, and stores nothing."""
    from framefleet.tasks import entry
    from framefleet.tasks.steps import score

    jobs = [rounds() for _ in range(3)]
    for job_id, results in jobs[1:]:
        queue_score(celery_app, job_id, results)
    in_index = {}

    def dies(taken):
        for scoring in taken:
            in_index[scoring.job.id] = scoring.job.r.zscore(LEASES, scoring.job.keys.lease(f"score:{FRAME}/0/{ENHANCED}"))
        raise RuntimeError("the worker was lost")

    monkeypatch.setattr(score, "score_rounds", dies)
    with pytest.raises(RuntimeError, match="worker was lost"):
        entry.score_variations(jobs[0][1], jobs[0][0], FRAME)
    assert sorted(in_index) == sorted(job_id for job_id, _ in jobs)
    assert all(deadline > time.time() * 1000 for deadline in in_index.values())
    assert all(scored(job_id) is None for job_id, _ in jobs)
    dead = take_dead_leases()
    assert {job_id: dead.get(job_id) for job_id, _ in jobs} == {job_id: [f"score:{FRAME}/0/{ENHANCED}"]
                                                                for job_id, _ in jobs}


def test_a_failure_of_the_leaders_worker_stays_the_leaders(rounds, celery_app, monkeypatch):
    """The scorer fails once on the leader's worker (a model load, a GPU error): the leader's own
    round gets the scoring fallback, the rounds it took are given back unstored, and their own
    tasks score them."""
    from framefleet.tasks import entry
    from framefleet.tasks.steps import score

    jobs = [rounds() for _ in range(3)]
    for job_id, results in jobs[1:]:
        queue_score(celery_app, job_id, results)
    real, calls = score.process_scorer, []

    def fails_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: out of memory")
        return real()

    monkeypatch.setattr(score, "process_scorer", fails_once)
    own = entry.score_variations(jobs[0][1], jobs[0][0], FRAME)
    assert own["error"] == "CUDA error: out of memory" and own["scorer"] is None
    assert all(scored(job_id) is None and Job(job_id).leases.running_steps() == [] for job_id, _ in jobs[1:])
    for job_id, results in jobs[1:]:  # (the first of them leads a pass over the other)
        alone = entry.score_variations(results, job_id, FRAME)
        assert alone["error"] is None and all(v["scores"]["overall"] is not None for v in alone["variations"])


def test_a_write_that_fails_for_a_taken_round_leaves_the_leaders_task_whole(rounds, celery_app, monkeypatch):
    """Storing another round's outcome fails (its write meets a Redis error): the leader's task
    still returns its own stored outcome, and only that other round is left to the watchdog."""
    from framefleet.tasks import entry
    from framefleet.tasks.job.rounds import Rounds

    (leader, leader_results), (other, other_results) = rounds(), rounds()
    queue_score(celery_app, other, other_results)
    real = Rounds.save_scored

    def fails_for_other(self, frame, revision, source, result):
        if self.job.id == other:
            raise redis.ConnectionError("Connection reset by peer")
        return real(self, frame, revision, source, result)

    monkeypatch.setattr(Rounds, "save_scored", fails_for_other)
    result = entry.score_variations(leader_results, leader, FRAME)
    assert scored(leader) == result and scored(other) is None
    dead = take_dead_leases()
    assert dead.get(other) == [f"score:{FRAME}/0/{ENHANCED}"] and leader not in dead


def test_a_lease_that_cannot_be_released_does_not_keep_the_others(rounds, celery_app, monkeypatch):
    """A failed pass whose first release cannot be written (Redis restarting) still releases the
    rest, and none stays with this process's lease keeper: one it kept would be renewed while the
    worker lives, and that round's own task would wait on it for ever."""
    from framefleet.tasks import entry
    from framefleet.tasks.coordination import leases
    from framefleet.tasks.job.leases import Leases
    from framefleet.tasks.steps import score

    jobs = [rounds() for _ in range(3)]
    for job_id, results in jobs[1:]:
        queue_score(celery_app, job_id, results)
    refused, release = jobs[1][0], Leases.release

    def restarting(self, step, owner, finished):
        if self.job.id == refused:
            raise redis.ConnectionError("Redis is restarting")
        release(self, step, owner, finished)

    def dies(taken):
        raise RuntimeError("the worker was lost")

    monkeypatch.setattr(Leases, "release", restarting)
    monkeypatch.setattr(score, "score_rounds", dies)
    with pytest.raises(RuntimeError, match="worker was lost"):
        entry.score_variations(jobs[0][1], jobs[0][0], FRAME)
    step = f"score:{FRAME}/0/{ENHANCED}"
    assert not {lease.job.id for lease in list(leases._keeper._leases.values())} & {job_id for job_id, _ in jobs}
    assert Job(refused).leases.alive(step)  # not renewed: it runs out within the lease TTL
    dead = take_dead_leases()  # the others were released as unfinished: due for the watchdog at once
    assert [job_id for job_id, _ in jobs if job_id in dead] == [jobs[0][0], jobs[2][0]]
    lease = Job(refused).keys.lease(step)
    Job(refused).r.zrem(LEASES, lease)
    Job(refused).r.delete(lease)


def test_a_round_queued_during_the_wait_joins_the_pass_and_the_wait_is_bounded(rounds, celery_app, monkeypatch):
    from framefleet.tasks import entry
    from framefleet.tasks.coordination.score_batch import waiting_rounds

    monkeypatch.setenv("FRAMEFLEET_SCORE_BATCH_WAIT_MS", "400")
    get_settings.cache_clear()
    (first, first_results), (second, second_results) = rounds(), rounds()
    late = threading.Timer(0.1, queue_score, (celery_app, second, second_results))
    late.start()
    try:
        result = entry.score_variations(first_results, first, FRAME)
    finally:
        late.join()
    assert result["batch"]["frames"] == 2 and scored(second)["batch"] == result["batch"]

    started = time.monotonic()  # alone, the leader waits no longer than the setting
    with waiting_rounds(first, FRAME, 0, ENHANCED, limit=15, wait_s=0.2) as taken:
        assert taken == []
    assert 0.2 <= time.monotonic() - started < 2.0


def test_a_fleet_scores_frames_queued_together_in_fewer_passes(celery_app, fleet_for_test, tmp_path):
    """The gpu worker stops taking tasks while four jobs reach scoring, then takes them again: one
    task leads a pass over the others, and each job selects what unbatched scoring selects."""
    store = open_store(f"file://{tmp_path / 'artifacts'}")
    fleet = fleet_for_test({"FRAMEFLEET_STORE_URL": store.url}, beat=False)
    gpu = [fleet.node_name("gpu")]
    assert celery_app.control.cancel_consumer("gpu", destination=gpu, reply=True)
    try:
        jobs = [submit_job(celery_app, "references", references_request(unique_id("fleet-batch"), 1))
                for _ in range(4)]
        wait_until(lambda: len(waiting_tasks("gpu", SCORE_VARIATIONS, window=8)) == len(jobs))
    finally:
        assert celery_app.control.add_consumer("gpu", destination=gpu, reply=True)
    assert all(wait_for_job(job_id, timeout_s=60).outcome == "succeeded" for job_id in jobs)

    outcomes = {job_id: Job(job_id).rounds.scored("scene_001", 0, ENHANCED) for job_id in jobs}
    passes = {outcome["batch"]["lead"]: outcome["batch"]["frames"] for outcome in outcomes.values()}
    assert len(passes) < len(jobs) and sum(passes.values()) == len(jobs)
    scorer = create_scorer("heuristic")
    for job_id in jobs:  # every candidate's scores, and so the selection, as scored alone
        (frame,) = json.loads(store.get(f"jobs/{job_id}/manifest.json"))["frames"]
        weights = Job(job_id).spec.config.score_weights.model_dump()
        alone = scorer.score(frame["enhanced_prompt"], [decode_image(store.get(v["key"])) for v in frame["variations"]])
        expected = [overall_score(metrics, weights) for metrics in alone]
        assert [v["scores"]["overall"] for v in frame["variations"]] == expected
        best = max(range(len(expected)), key=lambda i: (expected[i], alone[i].pickscore, -i))
        assert frame["selected"]["index"] == frame["variations"][best]["index"]
