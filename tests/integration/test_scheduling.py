"""Scheduling on a real fleet: continuation first, per-frame readiness, the straggler cut.

Orders and counts only; the timings are in `make bench-load`."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.job.model import Job
from framefleet.tasks.providers.offline_latency import LatencyProfile
from framefleet.workers.client import submit_job, wait_for_job

from tests.helpers import storyboard_request, unique_id

pytestmark = pytest.mark.integration


def manifest_of(store, job_id: str) -> dict:
    return json.loads(store.get(f"jobs/{job_id}/manifest.json"))


def test_jobs_submitted_together_complete_in_submission_order(celery_app, fleet_for_test, tmp_path):
    store = open_store(f"file://{tmp_path / 'artifacts'}")
    # Two image slots: the images worker holds at most three messages (two running, one fetched
    # ahead, as observed with kombu's Redis transport), so when a queued new job's first variation
    # starts at least one sibling still waits in the new-job list, and is admitted next. The one
    # round that reaches the idle worker is taken message by message as it is published (and in
    # order, ahead of every later round), so its variations may find no sibling left to admit.
    fleet = fleet_for_test({"FRAMEFLEET_STORE_URL": store.url, "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": "0.2"},
                           shapes={"images": ("threads", 2)})
    job_ids = [submit_job(celery_app, "storyboard", storyboard_request(unique_id(f"order{n}"), 2)) for n in range(6)]
    for job_id in job_ids:
        assert wait_for_job(job_id, timeout_s=240).outcome == "succeeded"
    log = (fleet.log_dir / "images.log").read_text()
    not_admitted = [job_id for job_id in job_ids  # each queued new job's first frame ran in one piece
                    if not re.search(rf"job {re.escape(job_id)}: admitted [123] more variations of clip_001_start", log)]
    assert len(not_admitted) <= 1, not_admitted
    manifests = [manifest_of(store, job_id) for job_id in job_ids]
    first_done = manifests[0]["timings"]["finished"]
    last = manifests[-1]["frames"]
    selected_by_then = sum(f["timings"]["score"][1] <= first_done for f in last)
    assert selected_by_then < len(last) / 2  # FIFO ran every job in lockstep: all but the end were done
    finished = [m["timings"]["finished"] for m in manifests]
    assert finished[0] < finished[-1] and finished[1] < finished[-1]


def job_id_where(prefix: str, fits) -> str:
    """The first fresh job id whose deterministic latency draws satisfy ``fits``."""
    return next(job_id for n in itertools.count() if fits(job_id := unique_id(f"{prefix}{n}")))


def slow_third_frame_job(profile: LatencyProfile) -> str:
    """A job id whose offline LLM draws make frame 3's enhancement slow and frame 1's fast."""
    return job_id_where("ready", lambda job_id: profile.draw(f"llm/{job_id}/clip_002_start/0") > 2.0
                        and max(profile.draw(f"llm/{job_id}/clip_001_start/{call}") for call in range(8)) < 1.0)


def test_frame_one_starts_before_a_slow_enhancement_of_frame_three_finishes(celery_app, fleet_for_test, tmp_path):
    profile = LatencyProfile(median_s=0.02, cold_start_rate=0.3, cold_start_s=4.0)
    store = open_store(f"file://{tmp_path / 'artifacts'}")
    fleet_for_test({"FRAMEFLEET_STORE_URL": store.url, "FRAMEFLEET_OFFLINE_LLM_LATENCY_S": str(profile.median_s),
                    "FRAMEFLEET_OFFLINE_LLM_COLD_START_RATE": str(profile.cold_start_rate),
                    "FRAMEFLEET_OFFLINE_LLM_COLD_START_S": str(profile.cold_start_s)})
    job_id = submit_job(celery_app, "storyboard", storyboard_request(slow_third_frame_job(profile), 2))
    assert wait_for_job(job_id, timeout_s=120).outcome == "succeeded"
    frames = {f["name"]: f for f in manifest_of(store, job_id)["frames"]}
    assert frames["clip_001_start"]["timings"]["enqueued"] < frames["clip_002_start"]["timings"]["enhance"][1]
    assert frames["clip_002_start"]["timings"]["enqueued"] > frames["clip_002_start"]["timings"]["enhance"][1]


def cold_variation_job(profile: LatencyProfile) -> str:
    """A one-clip job whose first frame has exactly one cold variation (the others are fast)."""
    def draws(job_id: str, frame: str) -> list[float]:
        return [profile.draw(f"image/{job_id}/{frame}/{index}/0") for index in range(1, 5)]

    return job_id_where("cut", lambda job_id: sum(d > 5 for d in draws(job_id, "clip_001_start")) == 1
                        and max(draws(job_id, "clip_001_end")) < 5)


def test_a_cold_variation_is_cut_and_the_frame_ranked_on_the_rest(celery_app, fleet_for_test, tmp_path):
    profile = LatencyProfile(median_s=0.2, cold_start_rate=0.25, cold_start_s=60.0)
    store = open_store(f"file://{tmp_path / 'artifacts'}")
    fleet_for_test({"FRAMEFLEET_STORE_URL": store.url, "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": str(profile.median_s),
                    "FRAMEFLEET_OFFLINE_IMAGE_COLD_START_RATE": str(profile.cold_start_rate),
                    "FRAMEFLEET_OFFLINE_IMAGE_COLD_START_S": str(profile.cold_start_s),
                    "FRAMEFLEET_STRAGGLER_GRACE_S": "1"})
    job_id = submit_job(celery_app, "storyboard", storyboard_request(cold_variation_job(profile), 1))
    assert wait_for_job(job_id, timeout_s=60).outcome == "succeeded"  # long before the 60 s cold start ends
    manifest = manifest_of(store, job_id)
    start = manifest["frames"][0]
    cut = [v for v in start["variations"] if v["error"]]
    assert len(cut) == 1 and cut[0]["error"].startswith("straggler cut after ")
    assert sum(1 for v in start["variations"] if v["key"]) == 3  # ranked on MIN_VARIATIONS candidates
    assert f"variation {cut[0]['index']} failed: {cut[0]['error']}" in start["fallbacks"]
    assert manifest["cost"]["frames"]["clip_001_start"]["straggler_cuts"] == 1
    calls = [c["ledger_key"] for c in Job(job_id).ledger.offline_calls()]
    assert len(calls) == 8  # the cut variation was not retried
