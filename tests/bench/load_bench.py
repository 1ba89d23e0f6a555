"""`make bench-load`: many jobs at once on a real fleet (Redis plus worker processes).

J storyboards are submitted together to W images workers of T threads each (S = W × T image
slots). For each scheduling (FIFO, priority) it prints, side by side: images/s, the latency of
one job alone, the first-submitted job's latency under load, the per-job latency (mean, p50, p95,
max), the wave bound on the mean, the makespan, the frame time, the scheduling gap per frame and
how far apart a round's variations start.
The wave bound takes each job's own unloaded latency: its critical path from the manifest over
the efficiency measured on the job run alone (with latency profiles, jobs draw differently).

Modes:
  (default)     FIFO beside priority scheduling, fixed provider latencies.
  --realistic   the same with the realistic latency profile (REALISTIC, scaled by --time-factor).
  --heavy-tail  the realistic profile under priority scheduling, the straggler cut on beside off
                (same job ids, so the same latency draws).
  --scaling     images/s for W = 1, 2, 4 images workers (of 4 threads unless --threads).
Each configuration runs in a fresh process with its own Redis, store and fleet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

from framefleet.config.settings import Settings, get_settings
from framefleet.tasks.artifacts.store import open_store
from framefleet.workers.app import configure
from framefleet.workers.cli import demo_request
from framefleet.workers.client import submit_job, wait_for_job
from framefleet.workers.fleet import Fleet
from framefleet.workers.local_redis import LocalRedis
from rich.console import Console
from rich.table import Table

from tests.bench.pipeline_bench import critical_path
from tests.bench.stats import (
    HANDOVER_PARTS,
    Summary,
    frame_times,
    handover_parts,
    images_stored,
    job_latency,
    queue_waits,
    round_start_spreads,
    scheduling_gaps,
    summarize,
    wave_bound,
)

IMAGES_PER_FRAME = 4

# The realistic profile, in real seconds (README, "Load benchmark", says where they come from).
# Images (Replicate, e.g. google/nano-banana): several seconds per prediction, a modest spread,
# and now and then a cold boot of a minute. LLM (OpenAI gpt-4o-mini, a short answer per call):
# about 1.5 s, a wider spread, and an occasional slow call (rate-limit backoff, a retry).
REALISTIC = {
    "image": {"latency_s": 8.0, "latency_sigma": 0.3, "cold_start_rate": 0.03, "cold_start_s": 60.0},
    "llm": {"latency_s": 1.5, "latency_sigma": 0.5, "cold_start_rate": 0.02, "cold_start_s": 8.0},
}
# Straggler cut for --heavy-tail, in real seconds: a variation still running this long after
# the frame has FRAMEFLEET_MIN_VARIATIONS stored is stopped.
STRAGGLER_GRACE_S = 8.0
MIN_VARIATIONS_WITH_CUT = 3
# Slot holding's waits are real seconds too (their defaults, tasks/coordination/slot_hold.py): scaled with the profile.
SLOT_HOLD = {f"FRAMEFLEET_{name.upper()}": Settings.model_fields[name].default
             for name in ("slot_hold_s", "slot_hold_siblings_s")}


@dataclass(frozen=True)
class LoadConfig:
    label: str
    jobs: int
    clips: int
    workers: int
    threads: int
    provider_env: dict[str, str]
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def slots(self) -> int:
        return self.workers * self.threads


@dataclass
class LoadResult:
    config: LoadConfig
    unloaded_s: float  # one job alone, measured
    # Each loaded job's own unloaded latency: its critical path (its own latency draws) over the
    # efficiency of the job run alone. With latency profiles jobs differ, and one job alone is
    # one sample.
    unloaded_per_job_s: list[float]
    first_job_s: float
    latency: Summary
    makespan_s: float
    images: int
    frame_time: Summary
    gap: Summary
    queue_wait: Summary
    round_spread: Summary
    handover: dict[str, Summary]

    @property
    def images_per_s(self) -> float:
        return self.images / self.makespan_s

    @property
    def wave_bound_s(self) -> float:
        mean_unloaded = sum(self.unloaded_per_job_s) / len(self.unloaded_per_job_s)
        return wave_bound(mean_unloaded, self.config.jobs, self.config.slots, IMAGES_PER_FRAME)

    @property
    def first_job_slowdown(self) -> float:
        """The first-submitted job's latency over its own unloaded latency."""
        return self.first_job_s / self.unloaded_per_job_s[0]


def provider_env(image: dict[str, float], llm: dict[str, float], time_factor: float = 1.0) -> dict[str, str]:
    """FRAMEFLEET_OFFLINE_* settings for a profile; every duration is multiplied by time_factor."""
    env = {}
    for stage, profile in (("IMAGE", image), ("LLM", llm)):
        for name, value in profile.items():
            scaled = value * time_factor if name.endswith("_s") else value
            env[f"FRAMEFLEET_OFFLINE_{stage}_{name.upper()}"] = str(scaled)
    return env


def storyboard(job_id: str, clips: int) -> dict:
    return {**demo_request(clips), "job_id": job_id, "overrides": {}}


def run_load(config: LoadConfig) -> LoadResult:
    """One configuration on its own Redis, store and fleet (run in a fresh process: the Celery
    app caches its broker connection and result backend)."""
    with tempfile.TemporaryDirectory() as out, LocalRedis() as redis_server:
        env = {"FRAMEFLEET_BROKER_URL": redis_server.url, "FRAMEFLEET_STORE_URL": f"file://{out}",
               "FRAMEFLEET_LLM_PROVIDER": "offline", "FRAMEFLEET_IMAGE_PROVIDER": "offline",
               "FRAMEFLEET_SCORER": "heuristic", **config.provider_env, **config.extra_env}
        os.environ.update(env)
        get_settings.cache_clear()
        app = configure()
        store = open_store(f"file://{out}")

        def run_jobs(job_ids: list[str], clips: int) -> list[dict]:
            for job_id in job_ids:
                submit_job(app, "storyboard", storyboard(job_id, clips))
            for job_id in job_ids:
                wait_for_job(job_id, timeout_s=900, poll_s=0.05)
            return [json.loads(store.get(f"jobs/{job_id}/manifest.json")) for job_id in job_ids]

        with Fleet(env, log_dir=os.path.join(out, "logs"), shapes={"images": ("threads", config.threads)}) as fleet:
            extra = [f"-{n}" for n in range(2, config.workers + 1)]
            for suffix in extra:
                fleet.start_worker("images", suffix)
            fleet.wait_ready([fleet.node_name("images", suffix) for suffix in extra])
            run_jobs(["load-warmup"], 1)
            [alone] = run_jobs(["load-alone"], config.clips)
            manifests = run_jobs([f"load-{n:03d}" for n in range(config.jobs)], config.clips)

    submitted = [m["timings"]["submitted"] for m in manifests]
    finished = [m["timings"]["finished"] for m in manifests]
    alone_efficiency = critical_path(alone) / job_latency(alone)
    handovers = [handover_parts(m) for m in manifests]
    return LoadResult(
        config=config, unloaded_s=job_latency(alone),
        unloaded_per_job_s=[critical_path(m) / alone_efficiency for m in manifests],
        first_job_s=job_latency(manifests[0]),
        latency=summarize(job_latency(m) for m in manifests), makespan_s=max(finished) - min(submitted),
        images=sum(images_stored(m) for m in manifests),
        frame_time=summarize(t for m in manifests for t in frame_times(m)),
        gap=summarize(g for m in manifests for g in scheduling_gaps(m)),
        queue_wait=summarize(w for m in manifests for w in queue_waits(m)),
        round_spread=summarize(s for m in manifests for s in round_start_spreads(m)),
        handover={name: summarize(d for parts in handovers for d in parts[name]) for name in HANDOVER_PARTS},
    )


def run_in_fresh_process(config: LoadConfig) -> LoadResult:
    print(f"running {config.label}: {config.jobs} jobs × {config.clips} clips, "
          f"{config.workers} images worker(s) × {config.threads} threads ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(run_load, config).result()
    print(f"  done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return result


def side_by_side(title: str, results: list[LoadResult]) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    for result in results:
        table.add_column(result.config.label, justify="right")
    rows = [
        ("image slots (workers × threads)", lambda r: f"{r.config.slots} ({r.config.workers} × {r.config.threads})"),
        ("images/s", lambda r: f"{r.images_per_s:.2f}"),
        ("one job alone", lambda r: f"{r.unloaded_s:.1f} s"),
        ("first job (submitted first)", lambda r: f"{r.first_job_s:.1f} s"),
        ("first job ÷ its unloaded latency", lambda r: f"{r.first_job_slowdown:.2f}"),
        ("job latency mean", lambda r: f"{r.latency.mean:.1f} s"),
        ("job latency p50 / p95 / max", lambda r: f"{r.latency.p50:.1f} / {r.latency.p95:.1f} / {r.latency.max:.1f} s"),
        ("wave bound on the mean", lambda r: f"{r.wave_bound_s:.1f} s"),
        ("makespan", lambda r: f"{r.makespan_s:.1f} s"),
        ("frame time p50 / p95", lambda r: f"{r.frame_time.p50:.2f} / {r.frame_time.p95:.2f} s"),
        ("scheduling gap p50 / p95", lambda r: f"{r.gap.p50:.2f} / {r.gap.p95:.2f} s"),
        ("variation queue wait p50 / p95", lambda r: f"{r.queue_wait.p50:.2f} / {r.queue_wait.p95:.2f} s"),
        ("round start spread p50 / p95", lambda r: f"{1000 * r.round_spread.p50:.0f} / {1000 * r.round_spread.p95:.0f} ms"),
        ("hand-over p50: " + " / ".join(HANDOVER_PARTS),
         lambda r: " / ".join(f"{1000 * r.handover[name].p50:.0f}" for name in HANDOVER_PARTS) + " ms"),
    ]
    for name, cell in rows:
        table.add_row(name, *(cell(r) for r in results))
    return table


def scaling_table(title: str, results: list[LoadResult]) -> Table:
    table = Table(title=title)
    for column in ("image slots", "images/s", "per worker vs 1", "one job alone", "first job", "mean job latency",
                   "wave bound on the mean"):
        table.add_column(column, justify="right")
    base = results[0].images_per_s / results[0].config.workers
    for r in results:
        table.add_row(str(r.config.slots), f"{r.images_per_s:.2f}", f"{r.images_per_s / r.config.workers / base:.2f}",
                      f"{r.unloaded_s:.1f} s", f"{r.first_job_s:.1f} s", f"{r.latency.mean:.1f} s",
                      f"{r.wave_bound_s:.1f} s")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=12, help="storyboards submitted together (default 12)")
    parser.add_argument("--clips", type=int, default=2, help="clips per storyboard (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="images workers (default 1)")
    parser.add_argument("--threads", type=int,
                        help="threads per images worker (default 8; 4 with --scaling, as in issue 10's table)")
    parser.add_argument("--image-latency", type=float, default=1.0, help="fixed seconds per image (default 1)")
    parser.add_argument("--llm-latency", type=float, default=0.1, help="fixed seconds per LLM call (default 0.1)")
    parser.add_argument("--time-factor", type=float, default=0.125,
                        help="scales the realistic profile's durations (default 0.125: 8 s images take 1 s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--realistic", action="store_true", help="realistic latency profile instead of fixed")
    mode.add_argument("--heavy-tail", action="store_true", help="realistic profile, straggler cut on beside off")
    mode.add_argument("--scaling", action="store_true", help="images/s for 1, 2 and 4 images workers")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--fifo", action="store_true", help="run FIFO scheduling only")
    only.add_argument("--priority", action="store_true", help="run priority scheduling only")
    args = parser.parse_args()
    if args.threads is None:
        args.threads = 4 if args.scaling else 8
    for name in ("jobs", "clips", "workers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if min(args.image_latency, args.llm_latency) < 0 or args.time_factor <= 0:
        parser.error("latencies must be non-negative and --time-factor positive")

    realistic = args.realistic or args.heavy_tail
    if realistic:
        profile = provider_env(REALISTIC["image"], REALISTIC["llm"], args.time_factor)
        profile |= {name: str(seconds * args.time_factor) for name, seconds in SLOT_HOLD.items()}
        described = f"realistic profile × {args.time_factor}"
    else:
        profile = provider_env({"latency_s": args.image_latency}, {"latency_s": args.llm_latency})
        described = f"{args.image_latency} s per image, {args.llm_latency} s per LLM call"
    schedulings = ["fifo"] if args.fifo else ["priority"] if args.priority else ["fifo", "priority"]

    def config(label: str, workers: int, extra_env: dict[str, str]) -> LoadConfig:
        return LoadConfig(label, args.jobs, args.clips, workers, args.threads, profile, extra_env)

    console = Console()
    if args.scaling:
        scheduling = "fifo" if args.fifo else "priority"
        results = [run_in_fresh_process(config(f"W={w}", w, {"FRAMEFLEET_SCHEDULING": scheduling}))
                   for w in (1, 2, 4)]
        console.print(scaling_table(f"{args.jobs} storyboards × {args.clips} clips, {described}, "
                                    f"{scheduling} scheduling, images workers of {args.threads} threads", results))
        return
    if args.heavy_tail:
        cut = {"FRAMEFLEET_STRAGGLER_GRACE_S": str(STRAGGLER_GRACE_S * args.time_factor)}
        scheduling = "fifo" if args.fifo else "priority"
        configs = [config("cut off", args.workers, {"FRAMEFLEET_SCHEDULING": scheduling,
                                                    "FRAMEFLEET_MIN_VARIATIONS": str(IMAGES_PER_FRAME), **cut}),
                   config("cut on", args.workers, {"FRAMEFLEET_SCHEDULING": scheduling,
                                                   "FRAMEFLEET_MIN_VARIATIONS": str(MIN_VARIATIONS_WITH_CUT), **cut})]
        title = (f"straggler cut, {scheduling} scheduling: {args.jobs} storyboards × {args.clips} clips, {described}, "
                 f"grace {STRAGGLER_GRACE_S * args.time_factor:g} s")
    else:
        configs = [config(s, args.workers, {"FRAMEFLEET_SCHEDULING": s}) for s in schedulings]
        title = f"{args.jobs} storyboards × {args.clips} clips submitted together, {described}"
    console.print(side_by_side(title, [run_in_fresh_process(c) for c in configs]))


if __name__ == "__main__":
    main()
