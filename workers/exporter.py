"""``framefleet exporter``: the fleet's Prometheus metrics at ``/metrics`` (docs/operations.md).

The exporter keeps nothing of its own. Counters and histograms are what the fleet recorded in Redis
where things happened (tasks/job/metrics.py), so any number of exporters, restarted at any time,
serve the same figures. Gauges are read at scrape time, each bounded: the queue lists' lengths
(every priority list, ``broker_lists``), the counts of jobs by state the fleet keeps on every
transition, the parked jobs, and the workers that answer a broadcast (Celery's
``inspect().active_queues()``) within ``WORKER_REPLY_S``.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Iterator

import redis
from celery import Celery
from framefleet.config.celery import PRIORITY_STEPS, QUEUES, broker_lists
from framefleet.config.settings import Settings
from framefleet.tasks.job.keys import FLEET_METRICS, JOB_STATE_COUNTS, PARKED_JOBS
from framefleet.tasks.job.metrics import HISTOGRAMS, parse_field
from framefleet.tasks.job.redis import connect
from framefleet.tasks.job.states import UNFINISHED
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)

WORKER_REPLY_S = 1.0  # how long a scrape waits for workers to answer the broadcast
REDIS_TIMEOUT_S = 5.0

# Counters the fleet records: name → (label names, help). Unlabelled ones are served as 0 until
# the first increment, so rate() and alerts see them from the start.
COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "jobs_finished_total": (("status",), "Jobs whose first run finished, by outcome (succeeded, partial, failed, "
                                         "cancelled; parked: taken off by the watchdog)"),
    "provider_requests_total": (("provider", "outcome"), "Provider API calls: ok, rate_limited (429), error "
                                                         "(no answer, 4xx, 5xx)"),
    "provider_wait_seconds_total": (("provider",), "Seconds waited for a slot of the provider's fleet-wide budget"),
    "predictions_created_total": ((), "Replicate predictions created (paid)"),
    "images_stored_total": ((), "Candidate images stored"),
    "llm_calls_total": ((), "LLM calls made for enhancements"),
    "prompt_tokens_total": ((), "LLM prompt tokens"),
    "completion_tokens_total": ((), "LLM completion tokens"),
    "cost_usd_total": ((), "Estimated spend at the configured prices, as in the manifests' cost"),
    "straggler_cuts_total": ((), "Variations stopped by the straggler cut"),
    "step_redrives_total": ((), "Steps the watchdog re-drove after their worker died, and stalled jobs it resumed"),
    "fallbacks_total": (("kind",), "Fallbacks taken, by note kind (tasks/job/states.py NoteKind)"),
}
HISTOGRAM_HELP = {
    "job_duration_seconds": ((), "A job's first run, submitted to finished"),
    "frame_stage_seconds": (("stage",), "One frame's stages: enhance, generate (enqueued to the last variation), "
                                        "score, select"),
}


def _client(url: str, settings: Settings) -> redis.Redis:
    # No long retries: a scrape of a Redis that is down answers at once, with framefleet_redis_up 0.
    # With a sentinel:// URL a scrape reaches the current master (connect).
    return connect(url, settings, decode_responses=True, socket_connect_timeout=REDIS_TIMEOUT_S,
                   socket_timeout=REDIS_TIMEOUT_S)


class FleetCollector(Collector):
    def __init__(self, settings: Settings, app: Celery):
        self.state = _client(settings.state_url, settings)
        self.broker = (self.state if settings.broker_url == settings.state_url
                       else _client(settings.broker_url, settings))
        self.app = app
        self.job_p95_alert_s = settings.job_p95_alert_s

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("framefleet_redis_up", "Whether the last scrape could read the fleet's Redis")
        try:
            recorded, states, parked, lengths = self._read_redis()
        except redis.RedisError as error:
            log.warning("scrape: cannot read Redis: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from counters(recorded)
        yield from histograms(recorded)
        jobs = GaugeMetricFamily("framefleet_jobs", "Jobs by state (queued, running); finished jobs: "
                                                    "framefleet_jobs_finished_total", labels=["state"])
        for state in sorted(UNFINISHED):
            jobs.add_metric([state], max(0, int(states.get(state, 0))))
        yield jobs
        yield GaugeMetricFamily("framefleet_parked_jobs", "Jobs the watchdog parked (framefleet jobs says why)",
                                value=parked)
        yield GaugeMetricFamily("framefleet_job_p95_alert_seconds", "The job p95 the alert rules hold the fleet to "
                                "(FRAMEFLEET_JOB_P95_ALERT_S)", value=self.job_p95_alert_s)
        queue_length = GaugeMetricFamily("framefleet_queue_length", "Messages waiting in a queue's priority list "
                                         "(0 is served first: running jobs; 9: new jobs' first frames)",
                                         labels=["queue", "priority"])
        for (queue, priority), length in lengths.items():
            queue_length.add_metric([queue, str(priority)], length)
        yield queue_length
        workers = GaugeMetricFamily("framefleet_workers", "Workers consuming a queue that answered the scrape's "
                                    f"broadcast within {WORKER_REPLY_S:g} s", labels=["queue"])
        for queue, count in self._workers().items():
            workers.add_metric([queue], count)
        yield workers

    def _read_redis(self) -> tuple[dict[str, float], dict[str, str], int, dict[tuple[str, int], int]]:
        pipe = self.state.pipeline(transaction=False)
        pipe.hgetall(FLEET_METRICS)
        pipe.hgetall(JOB_STATE_COUNTS)
        pipe.hlen(PARKED_JOBS)
        recorded, states, parked = pipe.execute()
        pipe = self.broker.pipeline(transaction=False)
        lists = [(queue, priority, name) for queue in QUEUES
                 for priority, name in zip(PRIORITY_STEPS, broker_lists(queue), strict=True)]
        for _, _, name in lists:
            pipe.llen(name)
        lengths = dict(zip([(queue, priority) for queue, priority, _ in lists], pipe.execute(), strict=True))
        return {key: float(value) for key, value in recorded.items()}, states, parked, lengths

    def _workers(self) -> dict[str, int]:
        counts = dict.fromkeys(QUEUES, 0)
        try:
            replies = self.app.control.inspect(timeout=WORKER_REPLY_S).active_queues() or {}
        except Exception as error:  # noqa: BLE001 — the broker is down: no worker is seen
            log.warning("scrape: no answer to the workers broadcast: %s", error)
            return counts
        for queues in replies.values():
            for name in {queue.get("name") for queue in queues or []}:
                if name in counts:
                    counts[name] += 1
        return counts


def counters(recorded: dict[str, float]) -> Iterator[Metric]:
    by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for key, value in recorded.items():
        name, labels = parse_field(key)
        by_name[name].append((labels, value))
    for name, (label_names, help_text) in COUNTERS.items():
        family = CounterMetricFamily(f"framefleet_{name.removesuffix('_total')}", help_text, labels=label_names)
        series = by_name.get(name) or ([({}, 0.0)] if not label_names else [])
        for labels, value in series:
            family.add_metric([labels.get(label, "") for label in label_names], value)
        yield family


def histograms(recorded: dict[str, float]) -> Iterator[Metric]:
    for name, bounds in HISTOGRAMS.items():
        label_names, help_text = HISTOGRAM_HELP[name]
        buckets: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
        sums: dict[tuple[str, ...], float] = defaultdict(float)
        for key, value in recorded.items():
            field_name, labels = parse_field(key)
            series = tuple(labels.get(label, "") for label in label_names)
            if field_name == f"{name}_bucket":
                buckets[series][labels["le"]] = value
            elif field_name == f"{name}_sum":
                sums[series] = value
        if not label_names:
            buckets.setdefault((), {})
        family = HistogramMetricFamily(f"framefleet_{name}", help_text, labels=label_names)
        for series, counts in sorted(buckets.items()):
            cumulative, running = [], 0.0
            for le in [f"{bound:g}" for bound in bounds] + ["+Inf"]:  # stored per bucket; Prometheus: cumulative
                running += counts.get(le, 0.0)
                cumulative.append((le, running))
            family.add_metric(list(series), cumulative, sum_value=sums[series])
        yield family


def serve(settings: Settings, app: Celery, port: int, address: str, stop: threading.Event) -> None:
    """Serve /metrics on address:port until ``stop`` is set. OSError when the port cannot be had."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings, app))
    server, thread = start_http_server(port, addr=address, registry=registry)
    log.info("framefleet exporter on http://%s:%s/metrics", address, port)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
