"""`make bench-scale`: framefleet's coordination cost with many jobs in flight and many finished.

1. The 16-job figure: bench-overhead's fleet run (16 storyboards at once, offline providers at zero
   latency, heuristic scorer) on a fresh Redis: Redis commands, Redis CPU and worker CPU per frame.
2. On another fresh Redis with the same fleet: a few real jobs run to the end, then their keys are
   copied (DUMP/RESTORE, TTLs kept) under new job ids until ``--finished`` jobs are finished, each
   recorded as a finished job is (on the recent list, off the active list), with its create's
   result; a share (``--parked``) also carries a parked reason, as a job the watchdog gave up on.
   Redis memory (``held_memory``) before and after gives the bytes per finished job.
3. ``--jobs`` storyboards submitted at once: the same per-frame figures over the whole run, beside
   the 16-job ones (target: within 10%), and Redis memory sampled every 0.2 s: the bytes per job
   in flight where the jobs in flight held the most (finished ones counted at their own size).
4. The fleet stopped (so only this process talks to Redis), ``--jobs`` jobs created here and left
   queued: one job list, one resume, one watchdog round (with ``--dead`` steps to re-drive) and one
   whose stall sweep is due (it reads the active list, every ``stall_after_s / 2``), each timed,
   with the Redis commands it issued (INFO commandstats; Lua scripts count what they call) and the
   bytes Redis sent back; then ``--grow`` times the finished jobs and the same again: equal
   counts and bytes show the work is bounded by what each returns and by the jobs in flight, not by
   the jobs Redis keeps.

The 16-job figure is the sum of ``--repeat`` runs (one run is only 16 × 2 × clips frames). The
defaults are the figures in docs/benchmarks.md (6-9 minutes on 2 busy cores); ``--jobs 200
--finished 2000`` is a quick look.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Callable

import redis
from rich.console import Console
from rich.table import Table

from framefleet.config.celery import CREATE_STORYBOARD, JOB_STATUS, QUEUES, broker_lists
from framefleet.config.settings import get_settings
from framefleet.tasks.job.keys import ACTIVE_JOBS, LEASES, PARKED_JOBS, RECENT_JOBS, STALL_SWEEP, JobKeys
from framefleet.tasks.job.requests import new_job_id
from framefleet.workers.cli import demo_request
from framefleet.workers.fleet import Fleet
from framefleet.workers.local_redis import LocalRedis
from tests.bench.overhead_bench import SHAPES, Measure, command_stats, measured, run_fleet

TEMPLATE_JOBS = 8
SEED_BATCH = 500  # finished jobs per pipeline
# A finished job's keys that last: its round-wake lists (60 s) and Celery's chord counters
# (minutes) are gone soon after it ends.
TRANSIENT_MS = 10 * 60 * 1000
TARGET = 0.10  # per-frame growth allowed at scale
LIST_LIMIT = 50
NOT_THE_WORK = ("info", "ping")  # the measuring, and the clients' health checks
# Reply bytes that differ without more work: timestamps' digits.
REPLY_SLACK = 256
# Offline providers at zero latency, the heuristic scorer: what is left is coordination.
# As bench-overhead's fleet (its run is the 16-job figure): the offline provider's bill is a Redis
# write per image, and a list per job, that a real provider never makes.
INSTANT = {"LLM_PROVIDER": "offline", "IMAGE_PROVIDER": "offline", "SCORER": "heuristic",
           "OFFLINE_IMAGE_LATENCY_S": "0", "OFFLINE_LLM_LATENCY_S": "0", "LOG_LEVEL": "WARNING",
           "OFFLINE_CALL_LOG": "false"}


@dataclass
class FinishedJob:
    """A finished job's lasting keys, as DUMPs to restore under other ids."""

    submitted: float
    keys: dict[str, tuple[int, bytes]]  # part of JobKeys → (ms to live, DUMP)
    result: tuple[int, bytes]  # its create's Celery result
    sizes: dict[str, int]  # part → MEMORY USAGE


@dataclass
class Sample:
    at_s: float
    in_flight: int
    finished: int
    held: int  # held_memory over the baseline, less the finished jobs at their size


class InFlightMemory:
    """``measured()``'s done(): whether every job has finished; on the way, the sample where the
    jobs in flight held the most Redis memory."""

    def __init__(self, client: redis.Redis, jobs: int, baseline: int, per_finished: float):
        self.client, self.jobs, self.baseline, self.per_finished = client, jobs, baseline, per_finished
        self.recent_before = client.zcard(RECENT_JOBS)
        self.began = time.monotonic()
        self.peak: Sample | None = None

    def __call__(self) -> bool:
        pipe = self.client.pipeline(transaction=False)
        pipe.info("memory")
        pipe.zcard(RECENT_JOBS)
        pipe.scard(ACTIVE_JOBS)
        memory, recent, active = pipe.execute()
        finished = recent - self.recent_before - active
        in_flight = self.jobs - finished
        held = held_memory(memory) - self.baseline - round(finished * self.per_finished)
        if in_flight and (self.peak is None or held > self.peak.held):
            self.peak = Sample(time.monotonic() - self.began, in_flight, finished, held)
        return in_flight == 0

    @property
    def per_job(self) -> float:
        return self.peak.held / self.peak.in_flight


@dataclass
class Cost:
    seconds: float
    commands: dict[str, int]  # name → calls
    reply_bytes: int
    note: str = ""


def held_memory(memory: dict) -> int:
    """INFO memory's used_memory less the clients' and the append-only file's buffers: those come
    and go with the traffic of the moment (the seeding pipeline's query buffer stays until Redis
    trims it), and would make a sample taken later look like memory freed."""
    transient = ("mem_clients_normal", "mem_clients_slaves", "mem_aof_buffer", "mem_replication_backlog")
    return memory["used_memory"] - sum(memory.get(name, 0) for name in transient)


def issued(client: redis.Redis, operation: Callable[[], object]) -> tuple[Cost, object]:
    """Time ``operation``, and count the Redis commands it issued by name and the bytes Redis sent
    back (only this process talks to Redis; the INFOs that measure and health-check PINGs are
    left out)."""
    sent = client.info("stats")["total_net_output_bytes"]
    before = command_stats(client)
    began = time.perf_counter()
    outcome = operation()
    seconds = time.perf_counter() - began
    after = command_stats(client)
    sent = client.info("stats")["total_net_output_bytes"] - sent
    calls = {name: count - before.get(name, (0, 0))[0] for name, (count, _) in after.items()
             if name not in NOT_THE_WORK and count > before.get(name, (0, 0))[0]}
    return Cost(seconds, calls, sent), outcome


def fleet_env(url: str, out: str) -> dict[str, str]:
    settings = {**INSTANT, "BROKER_URL": url, "STORE_URL": f"file://{out}/store"}
    return {f"FRAMEFLEET_{name}": value for name, value in settings.items()}


def point_here_at(env: dict[str, str]) -> None:
    """This process (send_task, the steps run here) uses the fleet's Redis and settings."""
    from framefleet.workers.app import configure

    os.environ.update(env)
    get_settings.cache_clear()
    configure()


def run_until_finished(client: redis.Redis, requests: list[dict]) -> list[str]:
    """Submit by task name, wait until all have finished; the create tasks' ids."""
    from framefleet.workers.app import app

    finished_before = client.zcard(RECENT_JOBS) - client.scard(ACTIVE_JOBS)
    ids = [app.send_task(CREATE_STORYBOARD, args=[request]).id for request in requests]
    while client.zcard(RECENT_JOBS) - client.scard(ACTIVE_JOBS) < finished_before + len(requests):
        time.sleep(0.2)
    return ids


def finished_job(client: redis.Redis, job_id: str, create_task_id: str) -> FinishedJob:
    prefix = JobKeys(job_id).prefix
    keys, sizes = {}, {}
    for key in client.scan_iter(match=f"{prefix}*"):  # a bench on its own Redis: a few hundred keys
        ttl_ms = client.pttl(key)
        if ttl_ms > TRANSIENT_MS:
            part = key.decode().removeprefix(prefix)
            keys[part] = (ttl_ms, client.dump(key))
            sizes[part] = client.memory_usage(key)
    result_key = f"celery-task-meta-{create_task_id}"
    sizes["(create result)"] = client.memory_usage(result_key)
    return FinishedJob(client.zscore(RECENT_JOBS, job_id), keys, (client.pttl(result_key), client.dump(result_key)),
                       sizes)


def seed_finished(client: redis.Redis, templates: list[FinishedJob], count: int, older_than: float,
                  parked_share: float) -> None:
    """``count`` more finished jobs, copies of ``templates``, submitted one second apart before
    ``older_than`` (inside job_ttl_s, so the recent list keeps them); one in 1 / ``parked_share``
    with the reason the watchdog parked it."""
    parked_every = round(1 / parked_share) if parked_share else 0
    for start in range(0, count, SEED_BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + SEED_BATCH)):
            template, job_id = templates[n % len(templates)], new_job_id()
            prefix = JobKeys(job_id).prefix
            for part, (ttl_ms, dump) in template.keys.items():
                pipe.restore(prefix + part, ttl_ms, dump)
            pipe.restore(f"celery-task-meta-{uuid.uuid4()}", *template.result)
            pipe.zadd(RECENT_JOBS, {job_id: older_than - n - 1})
            if parked_every and n % parked_every == 0:
                pipe.hset(PARKED_JOBS, job_id, "step generate:clip_001_start/0/enhanced/0 died 4 times")
        pipe.execute()


def status_result_size(client: redis.Redis, job_id: str) -> int:
    """MEMORY USAGE of one `framefleet.jobs.status` result (a main app's poll)."""
    from framefleet.workers.app import app

    result = app.send_task(JOB_STATUS, args=[job_id])
    result.get(timeout=60)
    return client.memory_usage(f"celery-task-meta-{result.id}")


def create_queued(count: int, clips: int) -> list[str]:
    """``count`` jobs created here: stored, their enhancements queued, no worker to take them."""
    from framefleet.tasks.steps.create import create_job

    return [create_job("storyboard", {**demo_request(clips), "overrides": {}}).job_id for _ in range(count)]


def bounded_operations(client: redis.Redis, queued: list[str], dead: list[str]) -> dict[str, Cost]:
    """One job list (newest, then active only), one resume, one watchdog round that finds the
    first frame's enhancement of each of ``dead`` with its lease run out (indexed, its key gone,
    as when a worker dies). The messages they send are taken off again: each pass finds the same
    broker."""
    from framefleet.tasks.coordination.recovery import resume, watchdog_round
    from framefleet.tasks.job.jobs import job_summaries
    from framefleet.tasks.job.model import Job

    costs = {}
    for label, active_only in ((f"jobs.list, newest {LIST_LIMIT}", False), (f"jobs.list --active, newest {LIST_LIMIT}", True)):
        costs[label], rows = issued(client, lambda: job_summaries(active_only, LIST_LIMIT))
        costs[label].note = f"{len(rows)} rows"
    lengths = {name: client.llen(name) for queue in QUEUES for name in broker_lists(queue)}
    costs["resume, one queued job"], outcome = issued(client, lambda: resume(Job(queued[0])))
    costs["resume, one queued job"].note = f"{outcome}; it read the broker's {sum(lengths.values()):,} messages"
    first_frame = Job(queued[0]).spec.plan.frames[0].name
    client.zadd(LEASES, {JobKeys(job_id).lease(f"enhance:{first_frame}"): 0 for job_id in dead})
    client.set(STALL_SWEEP, int(time.time() * 1000))  # a sweep just began: a round as most rounds run
    costs["watchdog round"], report = issued(client, watchdog_round)
    costs["watchdog round"].note = f"re-drove {len(report['acted'])} steps"
    client.delete(STALL_SWEEP)
    label = "watchdog round with its stall sweep"
    costs[label], report = issued(client, watchdog_round)
    costs[label].note = f"read {client.scard(ACTIVE_JOBS):,} active jobs' status, resumed {len(report['acted'])}"
    for name, length in lengths.items():  # kombu pushes on the left
        if (sent := client.llen(name) - length) > 0:
            client.ltrim(name, sent, -1)
    return costs


@dataclass
class ScaleRun:
    jobs: int
    finished: int
    measure: Measure
    per_finished: float
    in_flight: InFlightMemory
    templates: list[FinishedJob]
    status_result: int
    costs: dict[str, dict[str, Cost]]  # finished jobs → operation → cost


def run_scale(jobs: int, finished: int, clips: int, dead: int, parked_share: float, grow: int) -> ScaleRun:
    from framefleet.tasks.coordination import recovery

    with tempfile.TemporaryDirectory() as out, LocalRedis() as server:
        env = fleet_env(server.url, out)
        point_here_at(env)
        recovery.log.setLevel(logging.ERROR)  # the rounds below re-drive on purpose: no news
        client = redis.Redis.from_url(server.url)
        with Fleet(env, log_dir=f"{out}/logs", shapes=SHAPES) as fleet:
            requests = [{**demo_request(clips), "overrides": {}} for _ in range(TEMPLATE_JOBS)]
            task_ids = run_until_finished(client, requests)
            templates = [finished_job(client, request["job_id"], task_id)
                         for request, task_id in zip(requests, task_ids)]
            status_result = status_result_size(client, requests[0]["job_id"])
            oldest = min(template.submitted for template in templates)

            before = held_memory(client.info("memory"))
            seed_finished(client, templates, finished, oldest, parked_share)
            baseline = held_memory(client.info("memory"))
            per_finished = (baseline - before) / finished

            requests = [{**demo_request(clips), "overrides": {}} for _ in range(jobs)]
            in_flight = InFlightMemory(client, jobs, baseline, per_finished)
            from framefleet.workers.app import app

            measure = measured(f"{jobs:,} jobs, {finished:,} finished", client,
                               {queue: process.pid for queue, process in fleet.processes.items()}, jobs * 2 * clips,
                               lambda count: [app.send_task(CREATE_STORYBOARD, args=[request])
                                              for request in requests[:count]],
                               lambda count: count == 0 or in_flight(), jobs, 0)  # warmed up by the templates
        queued = create_queued(jobs, clips)
        # Each pass re-drives other jobs' steps (a step re-driven max_redrives times parks its job).
        redriven = [queued[1 + n * dead:1 + (n + 1) * dead] for n in range(3)]
        bounded_operations(client, queued, redriven[0])  # the first calls load scripts and start lists
        costs = {f"{finished + TEMPLATE_JOBS + jobs:,}": bounded_operations(client, queued, redriven[1])}
        seed_finished(client, templates, (grow - 1) * finished, oldest - finished, parked_share)
        costs[f"{grow * finished + TEMPLATE_JOBS + jobs:,}"] = bounded_operations(client, queued, redriven[2])
        return ScaleRun(jobs, finished, measure, per_finished, in_flight, templates, status_result, costs)


def report(sixteen: Measure, scale: ScaleRun) -> None:
    console = Console()
    large = scale.measure
    table = Table(title=f"per frame: {sixteen.label} ({sixteen.frames} frames) beside {large.label} "
                        f"({large.frames:,} frames)")
    for column in ("measure", sixteen.label, large.label, "change", f"target ≤ +{TARGET:.0%}"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    rows = [("Redis commands", lambda m: sum(m.commands.values()), "", 1, True),
            ("Redis CPU", lambda m: 1000 * m.redis_cpu_s, " ms", 3, True),
            *[(f"{queue} worker CPU", lambda m, q=queue: 1000 * m.worker_cpu_s.get(q, 0.0), " ms", 2, queue == "control")
              for queue in ("control", "images", "gpu", "llm", "intake")]]
    for name, value, unit, digits, targeted in rows:
        a, b = sixteen.per_frame(value(sixteen)), large.per_frame(value(large))
        change = b / a - 1 if a else 0.0
        verdict = ("held" if change <= TARGET else "MISSED") if targeted else ""
        table.add_row(name, f"{a:.{digits}f}{unit}", f"{b:.{digits}f}{unit}", f"{change:+.1%}", verdict)
    table.add_row("frames/s", f"{sixteen.frames / sixteen.wall_s:.1f}", f"{large.frames / large.wall_s:.1f}", "", "")
    console.print(table)
    grown = {name: large.per_frame(calls) - sixteen.per_frame(sixteen.commands.get(name, 0))
             for name, calls in large.commands.items()}
    console.print("commands per frame that changed most at scale: " + ", ".join(
        f"{name} {change:+.2f}" for name, change in sorted(grown.items(), key=lambda item: -abs(item[1]))[:8]))

    peak = scale.in_flight.peak
    memory = Table(title="Redis memory (INFO used_memory less client and AOF buffers)")
    memory.add_column("what")
    memory.add_column("bytes", justify="right")
    memory.add_column("how", justify="left")
    memory.add_row("per finished job", f"{scale.per_finished:,.0f}",
                   f"{scale.finished:,} seeded: memory after − before, / {scale.finished:,}")
    memory.add_row("per job in flight", f"{scale.in_flight.per_job:,.0f}",
                   f"at {peak.at_s:.0f} s: {peak.in_flight:,} in flight, {peak.finished:,} finished; memory − "
                   "baseline − finished × their size, / in flight")
    memory.add_row("per `framefleet.jobs.status` call", f"{scale.status_result:,}",
                   "its result, kept result_expires (a main app's poll)")
    console.print(memory)
    parts = Table(title=f"a finished job's keys ({len(scale.templates[0].keys)} lasting; MEMORY USAGE, mean of "
                        f"{len(scale.templates)})")
    parts.add_column("key")
    parts.add_column("bytes", justify="right")
    names = sorted(scale.templates[0].sizes, key=lambda part: -scale.templates[0].sizes[part])
    for part in names:
        parts.add_row(part, f"{sum(t.sizes.get(part, 0) for t in scale.templates) / len(scale.templates):,.0f}")
    parts.add_row("sum", f"{sum(sum(t.sizes.values()) for t in scale.templates) / len(scale.templates):,.0f}")
    console.print(parts)

    settings = get_settings()
    from framefleet.workers.app import app

    bounds = Table(title="what bounds the memory")
    bounds.add_column("setting")
    bounds.add_column("value", justify="right")
    bounds.add_column("bounds")
    bounds.add_row("job_ttl_s", f"{settings.job_ttl_s:,} s", "every key of a job expires this long after its create "
                   "(a choose or regenerate renews it)")
    bounds.add_row("recent list", f"{settings.job_ttl_s:,} s", "each create trims it to the jobs submitted within "
                   "job_ttl_s; each park drops the parked jobs no longer on it")
    bounds.add_row("result_expires", f"{app.conf.result_expires:,} s", "the results of a main app's calls (create, "
                   "status, list, choose, regenerate, resume, cancel); the fleet's own steps store none")
    bounds.add_row("lease_ttl_s", f"{settings.lease_ttl_s:g} s", "a step's lease; the index holds running steps only")
    console.print(bounds)

    ops = Table(title=f"bounded work: {scale.jobs:,} jobs queued, one call each (this process alone on Redis)")
    for column in ("operation", "finished jobs", "ms", "Redis commands", "reply bytes", "result"):
        ops.add_column(column, justify="right" if column in ("ms", "Redis commands", "reply bytes") else "left")
    for finished, costs in scale.costs.items():
        for operation, cost in costs.items():
            ops.add_row(operation, finished, f"{1000 * cost.seconds:.1f}", f"{sum(cost.commands.values()):,}",
                        f"{cost.reply_bytes:,}", cost.note)
    console.print(ops)
    fewer, more = scale.costs.values()
    grown = [name for name in fewer if fewer[name].commands != more[name].commands
             or abs(more[name].reply_bytes - fewer[name].reply_bytes) > REPLY_SLACK]
    console.print(f"the same commands, by name, and reply bytes (±{REPLY_SLACK}) with more finished jobs: "
                  + (f"NO: {', '.join(grown)}" if grown else "yes, every operation"))

def summed(label: str, measures: list[Measure]) -> Measure:
    def total(field: str) -> dict:
        return dict(sum((Counter(getattr(measure, field)) for measure in measures), Counter()))

    return Measure(label, sum(m.frames for m in measures), sum(m.wall_s for m in measures), total("commands"),
                   total("command_usec"), sum(m.redis_cpu_s for m in measures), total("worker_cpu_s"),
                   sum(m.requests for m in measures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="storyboards submitted at once")
    parser.add_argument("--finished", type=int, default=10_000, help="finished jobs in Redis")
    parser.add_argument("--clips", type=int, default=1, help="clips per storyboard (2 frames each)")
    parser.add_argument("--dead", type=int, default=10, help="steps for each watchdog round to re-drive")
    parser.add_argument("--parked", type=float, default=0.01, help="share of the finished jobs parked")
    parser.add_argument("--grow", type=int, default=4, help="the finished jobs for the second pass, × --finished")
    parser.add_argument("--repeat", type=int, default=3, help="runs of 16 jobs summed for the 16-job figure")
    args = parser.parse_args()
    if args.jobs < 1 + 3 * args.dead:
        parser.error("--jobs must be at least 1 + 3 × --dead (three watchdog rounds, each on other jobs)")
    # Each run in a process of its own: the Celery app keeps its connections to the first Redis.
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        sixteen = summed(f"16 jobs × {args.repeat}",
                         [pool.submit(run_fleet, 16, args.clips).result() for _ in range(args.repeat)])
    report(sixteen, run_scale(args.jobs, args.finished, args.clips, args.dead, args.parked, args.grow))


if __name__ == "__main__":
    main()
