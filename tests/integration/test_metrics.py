"""`framefleet exporter` scraped over HTTP: a real fleet runs jobs on the official OpenAI and Replicate
clients (against the stand-ins), and what the exporter serves equals what the manifests and the
stand-ins say, across an exporter restart and with two exporters at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

import httpx
import pytest
from framefleet.tasks.artifacts.keys import variation_seed
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.job.states import NoteKind
from framefleet.workers.local_redis import free_port
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.replicate_api import FakeReplicate
from tests.helpers import put_reference, run_job, stand_in_env, storyboard_request, unique_id, wait_until

pytestmark = pytest.mark.integration


class Exporter:
    """One `framefleet exporter` process on a free loopback port."""

    def __init__(self, broker_url: str):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "framefleet.workers.cli", "exporter", "--port", str(self.port),
             "--address", "127.0.0.1"], env={**os.environ, "FRAMEFLEET_BROKER_URL": broker_url},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(self.answers, timeout_s=60)

    def answers(self) -> bool:
        assert self.process.poll() is None, self.process.stderr.read().decode()
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def recorded(scraped: dict) -> dict:
    """The counters and histograms: what the fleet recorded (gauges are read at scrape time)."""
    return {key: v for key, v in scraped.items() if key[0].endswith(("_total", "_bucket", "_sum", "_count"))}


@pytest.fixture(scope="module")
def fleet_and_stand_ins(tmp_path_factory, start_fleet):
    root = tmp_path_factory.mktemp("artifacts-metrics")
    with FakeOpenAI() as openai_api, FakeReplicate() as replicate_api:
        fleet = start_fleet({
            "FRAMEFLEET_STORE_URL": f"file://{root}", **stand_in_env(openai_api, replicate_api),
            "FRAMEFLEET_REPLICATE_POLL_INTERVAL_S": "0.2",
        })
        yield open_store(f"file://{root}"), openai_api, replicate_api, fleet
        fleet.stop()


def test_the_exporters_figures_are_the_manifests_and_the_providers(celery_app, broker_url, fleet_and_stand_ins,
                                                                   no_process_outlives_the_test):
    store, openai_api, replicate_api, _ = fleet_and_stand_ins
    first = Exporter(broker_url)
    try:
        before = first.scrape()
        openai_before, replicate_before = len(openai_api.requests), len(replicate_api.calls)
        throttled_before = openai_api.throttled, sum(replicate_api.throttled.values())
        # One 429 from each provider, and one variation that fails twice (a failure record).
        openai_api.script = [("429", 0.2)]
        replicate_api.throttle("create", 0.2)
        plain, failing = unique_id("metrics"), unique_id("metrics-nsfw")
        replicate_api.fail_seeds = {variation_seed(failing, "clip_001_start", "enhanced", 2, attempt)
                                    for attempt in (0, 1)}
        manifests = [run_job(celery_app, "storyboard", storyboard_request(
            plain, 2, reference_image=put_reference(store, plain)), store)[1],
            run_job(celery_app, "storyboard", storyboard_request(  # a model that takes seeds
                failing, 1, overrides={"image_model": "bytedance/seedream-4"}), store)[1]]
        totals = Counter()
        for manifest in manifests:
            totals.update(manifest["cost"]["total"])
        assert [m["status"] for m in manifests] == ["succeeded", "succeeded"]
        assert totals["predictions_created"] == 6 * 4 + 1  # 6 frames of 4, one retried variation
        frames = sum(len(m["frames"]) for m in manifests)
        # Fallbacks by kind: the frames' typed notes.
        noted = Counter(note["kind"] for m in manifests for frame in m["frames"] for note in frame["notes"]
                        if note["kind"] not in ("quality_low", "metric_failed"))
        assert noted == {NoteKind.VARIATION_FAILED.value: 1}
        openai_requests = len(openai_api.requests) - openai_before
        expected = {
            ("framefleet_jobs_finished_total", ("status", "succeeded")): 2,
            ("framefleet_job_duration_seconds_count",): 2,
            **{(f"framefleet_{counter}_total",): totals[counter] for counter in (
                "predictions_created", "images_stored", "llm_calls", "prompt_tokens", "completion_tokens")},
            ("framefleet_straggler_cuts_total",): 0,
            **{("framefleet_fallbacks_total", ("kind", kind.value)): noted[kind.value] for kind in NoteKind},
            # Stage histograms: one observation per frame and stage.
            **{("framefleet_frame_stage_seconds_count", ("stage", stage)): frames
               for stage in ("enhance", "generate", "score", "select")},
            # Provider calls as the stand-ins saw them.
            ("framefleet_provider_requests_total", ("provider", "openai"), ("outcome", "rate_limited")):
                1 + openai_api.throttled - throttled_before[0],
            ("framefleet_provider_requests_total", ("provider", "openai"), ("outcome", "ok")):
                openai_requests - 1,  # the scripted 429 is among the requests it logged
            ("framefleet_provider_requests_total", ("provider", "openai"), ("outcome", "error")): 0,
            ("framefleet_provider_requests_total", ("provider", "replicate"), ("outcome", "rate_limited")):
                sum(replicate_api.throttled.values()) - throttled_before[1],
        }
        replicate_calls = len(replicate_api.calls) - replicate_before

        def differences(scraped: dict) -> dict:
            moved = {key: delta(scraped, before, key[0], **dict(key[1:])) for key in expected}
            wrong = {key: (moved[key], want) for key, want in expected.items() if moved[key] != want}
            counted = sum(delta(scraped, before, "framefleet_provider_requests_total", provider="replicate",
                                outcome=outcome) for outcome in ("ok", "rate_limited", "error"))
            if counted != replicate_calls:
                wrong["replicate requests"] = (counted, replicate_calls)
            return wrong

        # Each worker process writes what it counted within a second (job/metrics.py).
        try:
            wait_until(lambda: not differences(first.scrape()), timeout_s=30)
        finally:
            after = first.scrape()
        assert differences(after) == {}
        assert expected[("framefleet_provider_requests_total", ("provider", "replicate"),
                         ("outcome", "rate_limited"))] >= 1
        durations = sum(m["timings"]["finished"] - m["timings"]["submitted"] for m in manifests)
        assert delta(after, before, "framefleet_job_duration_seconds_sum") == pytest.approx(durations, abs=3)
        assert delta(after, before, "framefleet_cost_usd_total") == pytest.approx(
            sum(m["cost"]["estimated_usd"] for m in manifests), abs=1e-5)
        waited_ms = sum(m["cost"]["total"].get("rate_limit_wait_ms", 0) for m in manifests)
        assert waited_ms > 0  # the 429 paused the fleet; the next request waited
        assert delta(after, before, "framefleet_provider_wait_seconds_total",
                     provider="openai") == pytest.approx(waited_ms / 1000, abs=0.01)
        # Gauges: nothing left running or queued, one worker per queue.
        for state in ("queued", "running"):
            assert value(after, "framefleet_jobs", state=state) == value(before, "framefleet_jobs", state=state)
        for queue in ("intake", "control", "llm", "images", "gpu"):
            assert value(after, "framefleet_workers", queue=queue) == 1, queue
        assert value(after, "framefleet_redis_up") == 1
    finally:
        assert first.stop() == 0  # SIGTERM: a clean exit

    # Restarted, and two at once: the same counters (derived from Redis, not an exporter's memory).
    second, third = Exporter(broker_url), Exporter(broker_url)
    try:
        assert recorded(second.scrape()) == recorded(third.scrape()) == recorded(after)
    finally:
        assert second.stop() == 0 and third.stop() == 0


def test_a_queue_without_workers_shows_its_backlog(celery_app, broker_url, fleet_and_stand_ins,
                                                   no_process_outlives_the_test):
    from tests.helpers import purge_queues

    *_, fleet = fleet_and_stand_ins
    fleet.stop()
    exporter = Exporter(broker_url)
    try:
        for _ in range(3):  # a new job's first frame waits on images' priority-9 list
            celery_app.send_task("framefleet.images.generate_variation", args=["nobody", "f", "enhanced", 1],
                                 queue="images", priority=9)
        scraped = exporter.scrape()
        assert value(scraped, "framefleet_queue_length", queue="images", priority="9") == 3
        assert value(scraped, "framefleet_queue_length", queue="images", priority="0") == 0
        assert all(value(scraped, "framefleet_workers", queue=q) == 0 for q in ("images", "gpu", "control"))
    finally:
        purge_queues(celery_app)
        assert exporter.stop() == 0


def test_exporter_mistakes_are_one_line(broker_url, no_process_outlives_the_test):
    taken = Exporter(broker_url)
    try:
        for argv, env, expected in (
            (["--port", str(taken.port), "--address", "127.0.0.1"], {"FRAMEFLEET_BROKER_URL": broker_url},
             "port: cannot listen on 127.0.0.1"),
            (["--port", "70000"], {"FRAMEFLEET_BROKER_URL": broker_url}, "port: expected 1 to 65535"),
            (["--port", "9808"], {"FRAMEFLEET_BROKER_URL": "redis://127.0.0.1:1/0"}, "cannot reach the broker"),
        ):
            result = subprocess.run([sys.executable, "-m", "framefleet.workers.cli", "exporter", *argv],
                                    env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
            assert result.returncode == 2 and expected in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    finally:
        taken.stop()
