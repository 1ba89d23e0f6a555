"""Iterating on a storyboard on a real fleet: choose, regenerate, revisions and history, the
completion callback consumed by a separate Celery app, progress events, the job list, the budget
guard, and refusals that name their field and change nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from framefleet.tasks.job.errors import BudgetRefused, JobNotFound, RequestError, RevisionRefused
from framefleet.tasks.job.model import Job

RECEIVED = "mainapp:callbacks"  # tests/callback_app.py (imported only by the main app's worker)
from framefleet.tasks.artifacts.store import open_store
from framefleet.workers.client import (
    _send_and_wait,
    cancel_job,
    choose_candidate,
    list_jobs,
    regenerate_frame,
    submit_job,
    wait_for_job,
)

from tests.helpers import storyboard_request, unique_id, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, start_fleet, broker_url):
    root = tmp_path_factory.mktemp("artifacts-iteration")
    # Images take 0.3 s: a revision of two frames runs long enough for a cancel sent after it to stop it.
    # LLM calls take 0.1 s: a job's enhancements have all reserved their first round before any of
    # them asks for a second or any frame reserves its images, as the budget test's figures assume.
    start_fleet({"FRAMEFLEET_STORE_URL": f"file://{root}", "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": "0.3",
                 "FRAMEFLEET_OFFLINE_LLM_LATENCY_S": "0.1",
                 "FRAMEFLEET_OFFLINE_USD_PER_IMAGE": "0.01", "FRAMEFLEET_OFFLINE_USD_PER_LLM_CALL": "0.001"})
    return open_store(f"file://{root}")


@pytest.fixture(scope="module")
def main_app(broker_url):
    """The main app's worker: its own Celery app on its own queue, in its own process."""
    env = {**os.environ, "MAINAPP_BROKER_URL": broker_url}
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.callback_app", "worker", "-Q", "app",
                               "-P", "solo", "--without-gossip", "--without-mingle", "-l", "WARNING"],
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(30)


def manifest_of(store, job_id: str) -> dict:
    return json.loads(store.get(f"jobs/{job_id}/manifest.json"))


def frames_of(manifest: dict) -> dict[str, dict]:
    return {f["name"]: f for f in manifest["frames"]}


def callbacks_for(job_id: str) -> list[dict]:
    received = [json.loads(m) for m in Job(job_id).r.lrange(RECEIVED, 0, -1)]
    return [m for m in received if m["job_id"] == job_id]



def test_choose_then_regenerate_make_revisions_that_lose_nothing(celery_app, fleet, main_app):
    store = fleet
    request = storyboard_request(unique_id("iterate"), 2, callback={"task": "app.storyboard_done", "queue": "app"})
    job_id = submit_job(celery_app, "storyboard", request)
    assert wait_for_job(job_id, timeout_s=120).outcome == "succeeded"
    before = frames_of(manifest_of(store, job_id))
    end = before["clip_001_end"]
    other = next(v["index"] for v in end["variations"] if v["index"] != end["selected"]["index"])

    answer = choose_candidate(celery_app, job_id, "clip_001_end", other)
    assert answer["revision"] == 1 and answer["regenerating"] == ["clip_002_start", "clip_002_end"]
    assert wait_for_job(job_id, timeout_s=120, revision=1).outcome == "succeeded"
    manifest = manifest_of(store, job_id)
    after = frames_of(manifest)
    assert manifest["revision"] == 1
    assert after["clip_001_start"]["selected"] == before["clip_001_start"]["selected"]  # untouched
    assert after["clip_001_start"]["revision"] == 0 and after["clip_001_start"]["history"] == []
    chosen = after["clip_001_end"]
    assert chosen["revision"] == 1 and chosen["selected"]["index"] == other
    assert chosen["history"][0]["selected"] == end["selected"]  # the old selection is kept
    for name in ("clip_002_start", "clip_002_end"):
        frame = after[name]
        assert frame["revision"] == 1 and frame["status"] == "succeeded"
        assert frame["history"][0]["selected"] == before[name]["selected"]
        assert frame["enhanced_prompt"] == before[name]["enhanced_prompt"]  # enhancement reused
        assert all("/r1/" in v["key"] for v in frame["variations"])
    assert chosen["selected"]["frame_key"] in after["clip_002_start"]["inputs"]  # re-chained on the new image
    for old in before.values():  # nothing earlier was overwritten
        assert store.get(old["selected"]["frame_key"]) == store.get(old["selected"]["key"])

    answer = regenerate_frame(celery_app, job_id, "clip_002_start",
                              {"prompt": "Clip 2 opens on the harbour in thick fog", "cascade": False})
    assert answer["revision"] == 2 and answer["regenerating"] == ["clip_002_start"]
    assert wait_for_job(job_id, timeout_s=120, revision=2).outcome == "succeeded"
    final = frames_of(manifest_of(store, job_id))
    regenerated = final["clip_002_start"]
    assert regenerated["revision"] == 2 and regenerated["original_prompt"].endswith("thick fog")
    assert "thick fog" in regenerated["enhanced_prompt"] and len(regenerated["history"]) == 2
    assert final["clip_002_end"] == after["clip_002_end"]  # no cascade: the end frame is as it was
    assert final["clip_001_end"] == after["clip_001_end"]

    wait_until(lambda: len(callbacks_for(job_id)) == 3)
    time.sleep(1.0)  # a duplicate would have arrived by now
    received = callbacks_for(job_id)
    assert [m["revision"] for m in received] == [0, 1, 2]
    assert all(m["status"] == "succeeded" and m["manifest_key"] == f"jobs/{job_id}/manifest.json" for m in received)

    listed = {row["job_id"]: row for row in list_jobs(celery_app)}
    assert listed[job_id]["revision"] == 2 and listed[job_id]["outcome"] == "succeeded"
    assert job_id not in {row["job_id"] for row in list_jobs(celery_app, active_only=True)}


def test_progress_events_are_published_with_the_revision(celery_app, fleet):
    job_id = unique_id("events")
    pubsub = Job(job_id).progress.subscribe()
    events: list[dict] = []

    def listen() -> None:
        for message in pubsub.listen():
            events.append(json.loads(message["data"]))
            if events[-1]["state"] == "done":
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    submit_job(celery_app, "storyboard", storyboard_request(job_id, 1))
    listener.join(120)
    pubsub.close()
    stages = [e["stage"] for e in events]
    assert stages[-1] == "done" and "enhance" in stages and "generate" in stages and "score" in stages
    assert all(set(e) == {"state", "stage", "message", "percent", "frame", "revision"} for e in events)
    assert [e["percent"] for e in events] == sorted(e["percent"] for e in events)  # progress only grows


def test_refusals_name_the_field_and_change_nothing(celery_app, fleet):
    store = fleet
    job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("refuse"), 1))
    with pytest.raises(RevisionRefused, match="job_id: .* still running revision 0"):
        _send_and_wait(celery_app, "framefleet.frames.choose", job_id, "clip_001_start", 1)
    wait_for_job(job_id, timeout_s=120)
    manifest = manifest_of(store, job_id)
    with pytest.raises(JobNotFound, match="job_id"):
        choose_candidate(celery_app, "no-such-job", "clip_001_start", 1)
    with pytest.raises(RequestError, match="frame: no frame 'clip_009_start'"):
        choose_candidate(celery_app, job_id, "clip_009_start", 1)
    with pytest.raises(RequestError, match="variation_index: clip_001_start has no generated candidate 7"):
        choose_candidate(celery_app, job_id, "clip_001_start", 7)
    with pytest.raises(RequestError, match="options.overrides.num_variations"):
        regenerate_frame(celery_app, job_id, "clip_001_start", {"overrides": {"num_variations": 99}})
    with pytest.raises(RequestError, match="options.colour: Extra inputs are not permitted"):
        regenerate_frame(celery_app, job_id, "clip_001_start", {"colour": "red"})
    assert Job(job_id).progress.read().revision == 0
    assert manifest_of(store, job_id) == manifest


def test_the_budget_guard_degrades_in_order_and_never_overspends(celery_app, fleet):
    store = fleet
    cap = 0.045  # 4 frames: every first round fits, later rounds would eat the images, 4 images do not
    job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("budget"), 2,
                                                                      overrides={"max_usd": cap}))
    status = wait_for_job(job_id, timeout_s=120)
    manifest = manifest_of(store, job_id)
    budget, frames = manifest["budget"], frames_of(manifest)
    assert budget["max_usd"] == cap and budget["committed_usd"] <= cap + 1e-9
    images_paid = len(Job(job_id).ledger.offline_calls())  # the offline provider's bill
    spent = manifest["cost"]["total"]["llm_calls"] * 0.001 + images_paid * 0.01
    assert spent <= cap + 0.01  # never more than one call over
    notes = budget["degradations"]
    kinds = [("stopped" if "enhancement stopped" in n else "fewer" if "variations" in n else "skipped")
             for n in notes]
    assert {"stopped", "fewer", "skipped"} <= set(kinds)
    assert kinds.index("fewer") < kinds.index("skipped")  # fewer variations before skipping a frame
    first = frames["clip_001_start"]
    assert first["status"] == "succeeded" and 1 <= len(first["variations"]) < 4
    assert all(f["enhancement"]["iterations"] <= 1 for f in manifest["frames"])  # no round beyond the first
    assert first["enhancement"]["iterations"] == 1
    skipped = [f for f in manifest["frames"] if f["status"] == "skipped"]
    assert skipped and all(any("budget" in note for note in f["fallbacks"]) for f in skipped)
    assert all(f"{n}" in manifest["warnings"] for n in notes)
    assert status.outcome == "partial"

    # A revision the cap cannot afford (one image per frame it would generate) is refused up front
    # naming the cap, and changes nothing: no frame loses its selection to the budget.
    committed = Job(job_id).budget.committed()
    with pytest.raises(BudgetRefused, match=r"^overrides\.max_usd: this revision needs at least"):
        regenerate_frame(celery_app, job_id, "clip_001_start", {})
    assert Job(job_id).progress.read().revision == 0 and Job(job_id).budget.committed() == committed
    assert manifest_of(store, job_id) == manifest


def test_two_chooses_at_once_store_the_frame_that_is_recorded(celery_app, fleet):
    """Only the choose that wins the revision writes the frame: the refused one writes nothing."""
    store = fleet
    job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("choose2"), 1))
    assert wait_for_job(job_id, timeout_s=120).outcome == "succeeded"
    indexes = [v["index"] for v in frames_of(manifest_of(store, job_id))["clip_001_end"]["variations"] if v["key"]]
    for trial, pair in enumerate([indexes[:2], indexes[2:4], indexes[1:3]], start=1):
        outcomes: list = [None, None]

        def choose(slot: int, index: int) -> None:
            try:
                outcomes[slot] = _send_and_wait(celery_app, "framefleet.frames.choose", job_id, "clip_001_end", index)
            except RevisionRefused as refused:
                outcomes[slot] = refused

        threads = [threading.Thread(target=choose, args=(slot, index)) for slot, index in enumerate(pair)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        won = [o for o in outcomes if isinstance(o, dict)]
        assert len(won) == 1 and sum(isinstance(o, RevisionRefused) for o in outcomes) == 1, outcomes
        assert wait_for_job(job_id, timeout_s=60, revision=won[0]["revision"]).outcome == "succeeded"
        frame = frames_of(manifest_of(store, job_id))["clip_001_end"]
        assert frame["selected"]["index"] == pair[outcomes.index(won[0])]
        assert store.get(frame["selected"]["frame_key"]) == store.get(frame["selected"]["key"]), f"trial {trial}"


def test_cancelling_a_revision_keeps_the_last_finished_one(celery_app, fleet, main_app):
    store = fleet
    request = storyboard_request(unique_id("cancel-rev"), 1, callback={"task": "app.storyboard_done", "queue": "app"})
    job_id = submit_job(celery_app, "storyboard", request)
    assert wait_for_job(job_id, timeout_s=120).outcome == "succeeded"
    state = Job(job_id)
    manifest_bytes, frames = store.get(f"jobs/{job_id}/manifest.json"), state.frames.all()

    assert regenerate_frame(celery_app, job_id, "clip_001_start", {})["revision"] == 1
    assert cancel_job(celery_app, job_id) == {"job_id": job_id, "cancelled": True, "revision": 1, "reason": None,
                                               "predictions_cancelled": 0}
    status = wait_for_job(job_id, timeout_s=60, revision=1)
    assert (status.outcome, status.revision) == ("cancelled", 1) and "keeps its last finished" in status.message
    assert store.get(f"jobs/{job_id}/manifest.json") == manifest_bytes  # the finished revision's manifest
    assert state.frames.all() == frames  # every frame as revision 0 left it
    assert job_id not in {row["job_id"] for row in list_jobs(celery_app, active_only=True)}
    wait_until(lambda: [m["status"] for m in callbacks_for(job_id)] == ["succeeded", "cancelled"])

    other = next(v.index for v in frames["clip_001_end"].variations if v.index != frames["clip_001_end"].selected.index)
    assert choose_candidate(celery_app, job_id, "clip_001_end", other)["revision"] == 2  # further revisions run
    assert wait_for_job(job_id, timeout_s=60, revision=2).outcome == "succeeded"
    assert manifest_of(store, job_id)["revision"] == 2


def test_regenerate_overrides_of_the_enhancement_enhance_again_and_renew_the_jobs_keys(celery_app, fleet):
    store = fleet
    job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("reenhance"), 1))
    assert wait_for_job(job_id, timeout_s=120).outcome == "succeeded"
    state = Job(job_id)
    first = frames_of(manifest_of(store, job_id))["clip_001_start"]
    assert first["enhancement"]["iterations"] > 1
    assert state.ledger.task_ids() == set()  # a finished revision's task ids are dropped: a later cancel revokes its own
    for part in ("spec", "frames", "views", "status"):  # as if the job were near the end of its time in Redis
        state.r.expire(f"framefleet:job:{job_id}:{part}", 100)

    regenerate_frame(celery_app, job_id, "clip_001_start", {"overrides": {"max_enhancement_iterations": 1},
                                                            "cascade": False})
    assert all(state.r.ttl(f"framefleet:job:{job_id}:{part}") > 1000
               for part in ("spec", "frames", "views", "status"))
    assert wait_for_job(job_id, timeout_s=60, revision=1).outcome == "succeeded"
    assert frames_of(manifest_of(store, job_id))["clip_001_start"]["enhancement"]["iterations"] == 1

    regenerate_frame(celery_app, job_id, "clip_001_start", {"overrides": {"enhance": False}, "cascade": False})
    assert wait_for_job(job_id, timeout_s=60, revision=2).outcome == "succeeded"
    frame = frames_of(manifest_of(store, job_id))["clip_001_start"]
    assert frame["enhancement"]["skipped"] and frame["enhanced_prompt"] == frame["original_prompt"]
