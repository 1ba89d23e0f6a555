"""Whole jobs with both real providers (official clients) against the local API stand-ins; the
fleet's image model runs on a Replicate deployment, a job's other model on its public endpoint."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from framefleet.tasks.artifacts.keys import variation_seed
from framefleet.tasks.artifacts.store import open_store

from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.replicate_api import FakeReplicate
from tests.helpers import put_reference, run_job, stand_in_env, storyboard_request, unique_id

pytestmark = pytest.mark.integration

OPENAI_KEY, REPLICATE_TOKEN = "sk-secret-key-4711", "r8-secret-token-0815"
# The fleet's model runs on the account's deployment (warm instances); other models on their public endpoint.
DEPLOYMENT = "acme/warm-banana"


@pytest.fixture(scope="module")
def services(tmp_path_factory, start_fleet):
    root = tmp_path_factory.mktemp("artifacts-real")
    with FakeOpenAI() as openai_api, FakeReplicate() as replicate_api:
        replicate_api.deployments[DEPLOYMENT] = "google/nano-banana"
        fleet = start_fleet({
            "FRAMEFLEET_STORE_URL": f"file://{root}", **stand_in_env(openai_api, replicate_api, OPENAI_KEY,
                                                                      REPLICATE_TOKEN),
            "FRAMEFLEET_REPLICATE_DEPLOYMENT": DEPLOYMENT,
            # One listing a second, as in production.
            "FRAMEFLEET_REPLICATE_POLL_INTERVAL_S": "1.0", "FRAMEFLEET_SCORER": "heuristic",
            "FRAMEFLEET_LOG_LEVEL": "DEBUG",
        })
        yield open_store(f"file://{root}"), openai_api, replicate_api, fleet, root
        fleet.stop()  # while the stand-ins still answer: a cancelled variation's last call reaches them


def test_two_clip_storyboard_on_openai_and_replicate(celery_app, services):
    store, openai_api, replicate_api, _, _ = services
    job_id = unique_id("real")
    reference = put_reference(store, job_id, (10, 200, 10))
    before, calls_before = len(replicate_api.creations), len(replicate_api.calls)
    started = time.monotonic()
    status, manifest = run_job(celery_app, "storyboard", storyboard_request(job_id, 2, reference_image=reference),
                               store)
    wall_s = time.monotonic() - started
    assert status.outcome == "succeeded"
    # Provider budgets: 16 creations; one upload per distinct input image (reference, clip 1 start,
    # clip 1 end, clip 2 start); at most one download per output; and the other calls grow with
    # time (one listing a second at most), not with the 16 predictions.
    calls = Counter(endpoint for _, endpoint in replicate_api.calls[calls_before:])
    assert calls["create"] == 16 and calls["files"] <= 4
    assert all(count == 1 for count in replicate_api.downloads.values())
    assert sum(calls.values()) - calls["create"] <= 16 + wall_s
    assert sum(replicate_api.throttled.values()) == 0
    assert manifest["providers"] == {"llm": "openai", "images": "replicate"}
    creations = replicate_api.creations[before:]
    assert len(creations) == 16 and {(c["model"], c["deployment"]) for c in creations} == {
        ("google/nano-banana", DEPLOYMENT)}
    frames = {f["name"]: f for f in manifest["frames"]}
    for frame in frames.values():
        assert frame["enhanced_prompt"].endswith(" refined refined")  # two rounds: 75, then 90 ≥ 85
        assert frame["enhancement"] == {"iterations": 2, "final_score": 90.0, "fallback": False, "error": None,
                                        "skipped": False, "note": None}
        assert len(frame["variations"]) == 4 and all(v["key"] for v in frame["variations"])
    # clip 2's start frame: the model's image_input carries the reference and clip 1's end frame.
    clip2 = [c for c in creations if c["input"]["prompt"] == frames["clip_002_start"]["enhanced_prompt"]]
    assert len(clip2) == 4
    for creation in clip2:
        sent = [replicate_api.file_bytes(url) for url in creation["input"]["image_input"]]
        assert sent == [store.get(f"jobs/{job_id}/inputs/reference.png"),
                        store.get(f"jobs/{job_id}/frames/clip_001_end.png")]
        assert creation["input"]["aspect_ratio"] == "16:9"
    cost = manifest["cost"]
    assert cost["total"] == {"llm_calls": 16, "prompt_tokens": 1600, "completion_tokens": 320,
                             "rate_limit_waits": 0, "rate_limit_wait_ms": 0,
                             "predictions_created": 16, "images_stored": 16}
    assert cost["frames"]["clip_001_start"]["predictions_created"] == 4
    assert cost["estimated_usd"] == pytest.approx(16 * 0.039 + 1600 * 0.15e-6 + 320 * 0.6e-6)
    assert all(r["auth"] == f"Bearer {OPENAI_KEY}" for r in openai_api.requests)


def test_a_failed_prediction_among_four_is_a_failure_record_for_that_variation(celery_app, services):
    store, _, replicate_api, _, _ = services
    job_id = unique_id("nsfw")
    frame = "clip_001_start"
    replicate_api.fail_seeds = {variation_seed(job_id, frame, "enhanced", 2, attempt) for attempt in (0, 1)}
    request = storyboard_request(job_id, 1, overrides={"image_model": "bytedance/seedream-4"})
    status, manifest = run_job(celery_app, "storyboard", request, store)
    assert status.outcome == "succeeded"
    first = manifest["frames"][0]
    by_index = {v["index"]: v for v in first["variations"]}
    assert "NSFW" in by_index[2]["error"] and by_index[2]["key"] is None and by_index[2]["rank"] is None
    assert all(by_index[i]["key"] and by_index[i]["error"] is None for i in (1, 3, 4))
    assert first["selected"]["index"] != 2
    assert {c["deployment"] for c in replicate_api.creations if c["model"] == "bytedance/seedream-4"} == {None}
    assert manifest["cost"]["frames"][frame]["predictions_created"] == 5  # 4 + the one retry


def test_unknown_image_model_is_refused_naming_the_field(celery_app, services):
    from framefleet.tasks.job.requests import RequestError
    from framefleet.workers.client import submit_job

    with pytest.raises(RequestError, match="overrides.image_model"):
        submit_job(celery_app, "storyboard", storyboard_request(unique_id("badmodel"), 1,
                                                                overrides={"image_model": "acme/nothing"}))


def test_keys_never_reach_logs_artifacts_or_redis(celery_app, services, broker_url):
    import redis

    store, _, _, fleet, root = services
    run_job(celery_app, "storyboard", storyboard_request(unique_id("secrets"), 1, overrides={"keep_traces": True}),
            store)
    texts = [path.read_bytes() for path in fleet.log_dir.rglob("*") if path.is_file()]
    texts += [path.read_bytes() for path in root.rglob("*") if path.is_file()]
    client = redis.Redis.from_url(broker_url)
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"string":
            texts.append(client.get(key))
        elif kind == b"hash":
            texts += list(client.hgetall(key).values())
        elif kind == b"list":
            texts += client.lrange(key, 0, -1)
        elif kind in (b"set", b"zset"):
            texts += list(client.smembers(key)) if kind == b"set" else client.zrange(key, 0, -1)
    assert len(texts) > 50
    for secret in (OPENAI_KEY, REPLICATE_TOKEN):
        assert not any(secret.encode() in text for text in texts), secret


def test_cancelling_a_job_cancels_its_predictions_on_replicate(celery_app, services):
    from framefleet.workers.client import cancel_job, submit_job, wait_for_job

    store, _, replicate_api, _, _ = services
    replicate_api.never_finish = True
    try:
        before = len(replicate_api.creations)
        job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("cancel-rep"), 1))
        deadline = time.monotonic() + 60
        while len(replicate_api.creations) < before + 4:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert cancel_job(celery_app, job_id)["predictions_cancelled"] == 4
        assert wait_for_job(job_id, timeout_s=60).outcome == "cancelled"
        created = {c["id"] for c in replicate_api.creations[before:]}
        assert created <= set(replicate_api.canceled)
        assert {c["deployment"] for c in replicate_api.creations[before:]} == {DEPLOYMENT}
    finally:
        replicate_api.never_finish = False
