"""`make bench-providers`: N storyboard jobs through the official OpenAI and Replicate clients
against stand-ins that enforce one account's budgets, in compressed time.

``--scale 0.1`` makes a real minute 6 s: Replicate allows 60 creations and 300 other calls per
6 s window (the same per-second rates as 600 and 3000 a minute), a prediction runs 4 s (40 s
real), the OpenAI account allows ``--rpm``·scale requests per window, and every time setting
(watcher interval, leases, deadlines) is scaled alike. Counts that depend on the window (predictions
in flight, calls per window) are scaled by ``scale`` too, so 40 in flight here stand for 400.

The fleet is simulated in this process: ``--image-workers`` generators (each one worker process
with its own watcher thread) with ``--threads`` threads each, and ``--llm-threads`` enhancement
threads; state in a throwaway Redis. Each job runs like the pipeline: all frames enhanced at
once, then frame by frame 4 variations with the chained input images (reference, previous frame).

Prints calls per endpoint (per real minute, and the busiest budget window against its budget),
peak predictions in flight, 429s, generation failures and enhancement fallbacks caused by rate
limits (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait

from framefleet.workers.local_redis import LocalRedis
from rich.console import Console
from rich.table import Table

from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.replicate_api import FakeReplicate
from tests.helpers import png_bytes


def busiest_window(times: list[float], window_s: float) -> int:
    times, most, first = sorted(times), 0, 0
    for last, stamp in enumerate(times):
        while times[first] <= stamp - window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def is_rate_limit(error: BaseException) -> bool:
    """A fallback caused by rate limits: the new RateLimitDeadline, or a 429 that gave up."""
    import openai

    chain = [error, error.__cause__, error.__context__]
    return any(isinstance(e, openai.RateLimitError) or (e is not None and str(e).startswith("rate limited"))
               for e in chain)


class Bench:
    def __init__(self, args, replicate_api: FakeReplicate):
        from framefleet.config.settings import get_settings
        from framefleet.tasks.providers.replicate_images import ReplicateImageGenerator

        self.args, self.replicate_api = args, replicate_api
        self.settings = get_settings()
        self.generators = [ReplicateImageGenerator(self.settings) for _ in range(args.image_workers)]
        self.image_pools = [ThreadPoolExecutor(args.threads) for _ in range(args.image_workers)]
        self.llm_pool = ThreadPoolExecutor(args.llm_threads)
        self.lock = threading.Lock()
        self.fallbacks = Counter()  # "rate limits" | "other"
        self.generation_failures = Counter()
        self.waits = Counter()

    def enhance(self, prompt: str) -> tuple[str, bool]:
        """The enhanced prompt, or the original one and True (the fallback)."""
        from framefleet.tasks.providers.openai_llm import OpenAIPromptAgents
        from framefleet.tasks.steps.enhance import enhance_prompt_iterative

        agents = OpenAIPromptAgents(self.settings)
        try:
            return enhance_prompt_iterative(prompt, agents, max_iterations=4, score_threshold=85,
                                            convergence_epsilon=0.5).final_prompt, False
        except Exception as error:  # the pipeline's enhancement fallback: the original prompt
            with self.lock:
                self.fallbacks["rate limits" if is_rate_limit(error) else "other"] += 1
            return prompt, True
        finally:
            with self.lock:
                self.waits.update({k: v for k, v in agents.usage.items() if k.startswith("rate_limit")})

    def generate(self, worker: int, request) -> bytes | None:
        try:
            return self.generators[worker].generate(request)
        except Exception as error:  # a failure record in the pipeline
            with self.lock:
                self.generation_failures[type(error).__name__] += 1
            return None

    def job(self, number: int) -> None:
        from framefleet.tasks.providers.base import ImageRequest

        job_id = f"bench-{number}"
        reference = png_bytes((number * 37 % 256, 90, 160), size=(96, 54))
        names = ["clip_001_start", "clip_001_end", "clip_002_start", "clip_002_end"]
        originals = [f"Job {number}: {name} on a harbour at dawn" for name in names]
        prompts = list(self.llm_pool.map(self.enhance, originals))
        previous = None
        for frame_number, (name, (prompt, fell_back)) in enumerate(zip(names, prompts)):
            inputs = [reference] + ([previous] if previous else [])
            variations = 1 if fell_back else self.args.variations  # the fallback's single image
            futures = []
            for variation in range(1, variations + 1):
                worker = (number * 7 + frame_number * 4 + variation) % len(self.generators)
                request = ImageRequest(prompt=prompt, aspect_ratio="16:9", variation=variation, seed=variation,
                                       input_images=inputs, job_id=job_id, frame=name,
                                       ledger_key=f"jobs/{job_id}/variations/{name}/v{variation}.png#0")
                futures.append(self.image_pools[worker].submit(self.generate, worker, request))
            wait(futures)
            images = [f.result() for f in futures if f.result() is not None]
            previous = images[0] if images else previous

    def run(self) -> float:
        started = time.monotonic()
        with ThreadPoolExecutor(self.args.jobs) as jobs:
            list(jobs.map(self.job, range(1, self.args.jobs + 1)))
        return time.monotonic() - started

    def close(self) -> None:
        for pool in [*self.image_pools, self.llm_pool]:
            pool.shutdown()
        for generator in self.generators:
            if hasattr(generator, "close"):
                generator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--variations", type=int, default=4)
    parser.add_argument("--scale", type=float, default=0.1, help="seconds of bench per real second")
    parser.add_argument("--prediction-s", type=float, default=40.0, help="real run time of a prediction")
    parser.add_argument("--image-workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=16, help="threads per images worker")
    parser.add_argument("--llm-threads", type=int, default=16)
    parser.add_argument("--rpm", type=int, default=500, help="the OpenAI account's requests per minute")
    parser.add_argument("--tpm", type=int, default=1_000_000, help="the OpenAI account's tokens per minute")
    parser.add_argument("--llm-latency-s", type=float, default=3.0, help="real answer time of one LLM request")
    args = parser.parse_args()
    scale, window = args.scale, 60.0 * args.scale
    replicate_api = FakeReplicate(start_s=0.1 * args.prediction_s * scale, run_s=0.9 * args.prediction_s * scale,
                                  creation_limit=round(600 * scale), other_limit=round(3000 * scale), window_s=window)
    openai_api = FakeOpenAI(requests_limit=round(args.rpm * scale), tokens_limit=round(args.tpm * scale),
                            window_s=window, latency_s=args.llm_latency_s * scale)
    with LocalRedis(appendonly=False) as redis_server, replicate_api, openai_api:
        os.environ.update({
            "FRAMEFLEET_BROKER_URL": redis_server.url, "FRAMEFLEET_LOG_LEVEL": "WARNING",
            "REPLICATE_API_TOKEN": "r8-bench", "REPLICATE_BASE_URL": replicate_api.base_url,
            "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": openai_api.base_url,
            "FRAMEFLEET_OPENAI_MODEL": "bench-model",
            "FRAMEFLEET_REPLICATE_RATE_WINDOW_S": str(window),
            "FRAMEFLEET_REPLICATE_RATE_LIMIT": str(round(600 * scale)),
            "FRAMEFLEET_REPLICATE_OTHER_RATE_LIMIT": str(round(3000 * scale)),
            "FRAMEFLEET_REPLICATE_POLL_INTERVAL_S": str(1.0 * scale),
            "FRAMEFLEET_REPLICATE_WATCH_LEASE_S": str(10.0 * scale),
            "FRAMEFLEET_REPLICATE_RECONCILE_AFTER_S": str(30.0 * scale),
            "FRAMEFLEET_REPLICATE_PREDICTION_TIMEOUT_S": str(300.0 * scale),
            # Real frames (1-2 MB) never fit a data URL: every input goes through the files API.
            "FRAMEFLEET_REPLICATE_DATA_URL_MAX_BYTES": "0",
            "FRAMEFLEET_OPENAI_REQUESTS_PER_MINUTE": str(round(args.rpm * scale)),
            "FRAMEFLEET_OPENAI_TOKENS_PER_MINUTE": str(round(args.tpm * scale)),
            "FRAMEFLEET_OPENAI_RATE_WINDOW_S": str(window),
            "FRAMEFLEET_OPENAI_RATE_LIMIT_MAX_WAIT_S": str(600.0 * scale),
            "FRAMEFLEET_OPENAI_TIMEOUT_S": "60",
        })
        from framefleet.config.settings import get_settings

        get_settings.cache_clear()
        bench = Bench(args, replicate_api)
        try:
            wall = bench.run()
        finally:
            bench.close()
        report(args, wall, replicate_api, openai_api, bench)


def report(args, wall: float, replicate_api: FakeReplicate, openai_api: FakeOpenAI, bench: Bench) -> None:
    scale, window = args.scale, 60.0 * args.scale
    calls = replicate_api.calls
    counts = Counter(endpoint for _, endpoint in calls)
    table = Table(title=f"{args.jobs} jobs × 4 frames × {args.variations} variations, scale {scale:g} "
                        f"(a real minute = {window:g} s), wall {wall:.1f} s")
    for column in ("endpoint", "calls", "per real minute", "busiest window", "budget per window", "429s"):
        table.add_column(column, justify="right")
    budgets = {"create": round(600 * scale)}
    for endpoint in ("create", "get", "list", "cancel", "files"):
        times = [t for t, e in calls if e == endpoint]
        table.add_row(endpoint, str(counts[endpoint]), f"{counts[endpoint] / wall * 60:.0f}",
                      str(busiest_window(times, window)), str(budgets.get(endpoint, "")),
                      str(replicate_api.throttled[endpoint]))
    other = [t for t, e in calls if e != "create"]
    table.add_row("all but create", str(len(other)), f"{len(other) / wall * 60:.0f}",
                  str(busiest_window(other, window)), str(round(3000 * scale)),
                  str(sum(n for e, n in replicate_api.throttled.items() if e != "create")))
    llm_times = len(openai_api.requests) + openai_api.throttled
    table.add_row("openai chat", str(llm_times), f"{llm_times / wall * 60:.0f}", "", str(round(args.rpm * scale)),
                  str(openai_api.throttled))
    Console().print(table)
    throttled = sum(replicate_api.throttled.values()) + openai_api.throttled
    all_calls = len(calls) + llm_times
    peak = replicate_api.peak_in_flight()
    downloads = replicate_api.downloads
    print(f"peak predictions in flight: {peak} (real equivalent {peak / scale:.0f})")
    print(f"429s: {throttled} of {all_calls} calls ({100 * throttled / max(1, all_calls):.2f}%)")
    print(f"downloads: {sum(downloads.values())} for {len(downloads)} outputs; "
          f"uploads: {counts['files']}; creations: {len(replicate_api.creations)}")
    print(f"enhancement fallbacks caused by rate limits: {bench.fallbacks['rate limits']} "
          f"(other fallbacks: {bench.fallbacks['other']})")
    print(f"generation failures: {dict(bench.generation_failures) or 0}")
    print(f"OpenAI 429s by budget: {dict(openai_api.throttled_by) or 0}")
    print(f"LLM rate-limit waits: {bench.waits.get('rate_limit_waits', 0)} "
          f"({bench.waits.get('rate_limit_wait_ms', 0) / 1000:.1f} s)")


if __name__ == "__main__":
    main()
