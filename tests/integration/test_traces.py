"""Traces: real workers with OTEL_EXPORTER_OTLP_ENDPOINT set send their spans over OTLP/HTTP to a
collector stand-in in this process (the SDK's in-memory exporter cannot see other processes), and
one job is one trace with every step, provider calls as child spans."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from framefleet.tasks.artifacts.store import open_store

from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.otlp_collector import FakeCollector
from tests.fakes.replicate_api import FakeReplicate
from tests.helpers import run_job, stand_in_env, storyboard_request, unique_id, wait_until

pytestmark = pytest.mark.integration

CREATE, ENHANCE, GENERATE = "run/framefleet.storyboard.create", "run/framefleet.prompts.enhance", \
    "run/framefleet.images.generate_variation"
SCORE, SELECT, FINALIZE = "run/framefleet.scoring.score_variations", "run/framefleet.frames.select", \
    "run/framefleet.jobs.finalize"
CLIENT = 3  # SpanKind CLIENT in OTLP


@pytest.fixture(scope="module")
def traced_fleet(tmp_path_factory, start_fleet):
    root = tmp_path_factory.mktemp("artifacts-traces")
    with FakeCollector() as collector, FakeOpenAI() as openai_api, FakeReplicate() as replicate_api:
        fleet = start_fleet({
            "FRAMEFLEET_STORE_URL": f"file://{root}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200",
            **stand_in_env(openai_api, replicate_api), "FRAMEFLEET_REPLICATE_POLL_INTERVAL_S": "0.2",
        })
        yield open_store(f"file://{root}"), collector, replicate_api
        fleet.stop()  # while the collector still answers: the workers flush their last spans


def job_spans(collector: FakeCollector, job_id: str) -> list[dict]:
    """Every span of the trace the job's create started."""
    with collector.lock:
        spans = list(collector.spans)
    roots = {s["trace_id"] for s in spans if s["name"] == CREATE and s["attributes"].get("framefleet.job_id") == job_id}
    return [s for s in spans if s["trace_id"] in roots]


def test_one_job_is_one_trace_with_every_step(celery_app, traced_fleet):
    store, collector, _ = traced_fleet
    job_id = unique_id("traced")
    status, manifest = run_job(celery_app, "storyboard", storyboard_request(job_id, 2), store)
    assert status.outcome == "succeeded"
    wait_until(lambda: any(s["name"] == FINALIZE for s in job_spans(collector, job_id)), timeout_s=30)
    time.sleep(1)  # the last batches of the other workers
    spans = job_spans(collector, job_id)
    (trace_id,) = {s["trace_id"] for s in spans}
    by_id = {s["span_id"]: s for s in spans}
    (root,) = [s for s in spans if not s["parent_span_id"]]
    assert root["name"] == CREATE and root["resource"]["service.name"] == "framefleet"
    assert all(s["parent_span_id"] in by_id for s in spans if s is not root)  # one tree
    # Every step of every frame, labelled with the job and its frame.
    steps = Counter((s["name"], s["attributes"].get("framefleet.frame")) for s in spans
                    if s["name"].startswith("run/"))
    for frame in (f["name"] for f in manifest["frames"]):
        assert steps[(ENHANCE, frame)] == 1 and steps[(GENERATE, frame)] == 4, frame
        assert steps[(SCORE, frame)] == 1 and steps[(SELECT, frame)] == 1, frame
    assert steps[(FINALIZE, None)] == 1
    assert all(s["attributes"]["framefleet.job_id"] == job_id for s in spans if s["name"].startswith("run/"))
    assert {s["attributes"]["framefleet.variation"] for s in spans if s["name"] == GENERATE} == {"1", "2", "3", "4"}
    # A step's parent is the step that sent it (through a producer span): enhance by the create.
    def step_parent(span: dict) -> dict:
        parent = by_id[span["parent_span_id"]]
        return by_id[parent["parent_span_id"]] if parent["name"].startswith("apply_async/") else parent
    assert {step_parent(s)["name"] for s in spans if s["name"] == ENHANCE} == {CREATE}
    assert {step_parent(s)["name"] for s in spans if s["name"] == SCORE} == {GENERATE}
    # Provider calls are child spans of the step that made them.
    calls = [s for s in spans if s["kind"] == CLIENT]
    to_openai = Counter(by_id[s["parent_span_id"]]["name"] for s in calls if s["name"] == "openai chat.completions")
    creations = Counter(by_id[s["parent_span_id"]]["name"] for s in calls if s["name"] == "POST" and
                        str(s["attributes"].get("url.full") or s["attributes"].get("http.url")).endswith("/predictions"))
    assert to_openai == {ENHANCE: manifest["cost"]["total"]["llm_calls"]}
    assert creations == {GENERATE: manifest["cost"]["total"]["predictions_created"]} == {GENERATE: 16}
    # Nothing else started a trace: the watchdog, the prediction watcher's listings.
    with collector.lock:
        assert {s["trace_id"] for s in collector.spans} <= {s["trace_id"] for s in collector.spans
                                                            if s["name"] == CREATE}


def test_a_step_sent_from_outside_the_job_joins_its_trace(celery_app, traced_fleet):
    from framefleet.workers.client import cancel_job, submit_job, wait_for_job

    _, collector, replicate_api = traced_fleet
    replicate_api.never_finish = True
    try:
        before = len(replicate_api.creations)
        job_id = submit_job(celery_app, "storyboard", storyboard_request(unique_id("traced-cancel"), 1))
        wait_until(lambda: len(replicate_api.creations) >= before + 4, timeout_s=60)
        cancel_job(celery_app, job_id)  # the cancel task starts no trace; its finalize joins the job's
        assert wait_for_job(job_id, timeout_s=60).outcome == "cancelled"
    finally:
        replicate_api.never_finish = False
    wait_until(lambda: any(s["name"] == FINALIZE for s in job_spans(collector, job_id)), timeout_s=30)
    spans = job_spans(collector, job_id)
    assert len({s["trace_id"] for s in spans}) == 1
    with collector.lock:
        assert not any(s["name"] == "run/framefleet.jobs.cancel" for s in collector.spans)
