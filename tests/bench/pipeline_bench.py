"""`make bench`: a storyboard on the fleet with simulated provider latencies, against the
seeds' sequential in-process loop with the same providers.

Prints the wall time, the critical path from the manifest timings (longest enhancement + per
frame the slowest variation + scoring), their ratio (efficiency) and the speed-up. The client
polls the job's status every 5 ms, so polling adds at most that to the wall.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.providers.base import ImageRequest
from framefleet.tasks.providers.offline_images import OfflineImageGenerator
from framefleet.tasks.providers.offline_llm import OfflinePromptAgents
from framefleet.tasks.steps.enhance import enhance_prompt_iterative
from framefleet.workers.cli import demo_request
from framefleet.workers.fleet import Fleet
from framefleet.workers.local_redis import LocalRedis
from PIL import Image
from rich.console import Console
from rich.table import Table


def critical_path(manifest: dict) -> float:
    frames = manifest["frames"]
    longest_enhancement = max(f["timings"]["enhance"][1] - f["timings"]["enhance"][0] for f in frames)
    per_frame = sum(max(end - start for start, end in f["timings"]["variations"])
                    + (f["timings"]["score"][1] - f["timings"]["score"][0]) for f in frames)
    return longest_enhancement + per_frame


def run_on_fleet(request: dict, llm_latency: float, image_latency: float) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as out, LocalRedis() as redis_server:
        env = {"FRAMEFLEET_BROKER_URL": redis_server.url, "FRAMEFLEET_STORE_URL": f"file://{out}",
               "FRAMEFLEET_OFFLINE_LLM_LATENCY_S": str(llm_latency),
               "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": str(image_latency)}
        os.environ.update(env)
        from framefleet.config.settings import get_settings
        from framefleet.workers.app import configure
        from framefleet.workers.client import submit_job, wait_for_job

        get_settings.cache_clear()
        app = configure()
        with Fleet(env, log_dir=os.path.join(out, "logs")):
            submit_job(app, "storyboard", {**request, "job_id": "bench-warmup", "clips": request["clips"][:1]})
            wait_for_job("bench-warmup", timeout_s=300, poll_s=0.02)
            started = time.time()
            job_id = submit_job(app, "storyboard", request)
            wait_for_job(job_id, timeout_s=600, poll_s=0.005)
            wall = time.time() - started
            manifest = json.loads(open_store(f"file://{out}").get(f"jobs/{job_id}/manifest.json"))
    return wall, manifest


def run_sequentially(request: dict, llm_latency: float, image_latency: float, variations: int) -> float:
    """The seeds' loop: per frame, enhance, then each variation in turn, then scoring."""
    from framefleet.scoring import create_scorer

    agents, generator = OfflinePromptAgents(llm_latency), OfflineImageGenerator(image_latency)
    scorer = create_scorer("heuristic")
    started = time.time()
    previous: bytes | None = None
    for clip in request["clips"]:
        for prompt in (clip["start_prompt"], clip["end_prompt"]):
            enhanced = enhance_prompt_iterative(prompt, agents, max_iterations=4, score_threshold=85,
                                                convergence_epsilon=0.5).final_prompt
            images = [generator.generate(ImageRequest(prompt=enhanced, aspect_ratio="16:9", variation=v,
                                                      input_images=[previous] if previous else []))
                      for v in range(1, variations + 1)]
            scores = scorer.score(enhanced, [Image.open(io.BytesIO(i)).convert("RGB") for i in images])
            previous = images[max(range(len(images)), key=lambda i: scores[i].pickscore)]
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--image-latency", type=float, default=1.0)
    parser.add_argument("--llm-latency", type=float, default=0.1)
    args = parser.parse_args()
    request = demo_request(args.clips)
    request["overrides"] = {}
    request["job_id"] = "bench-storyboard"

    wall, manifest = run_on_fleet(request, args.llm_latency, args.image_latency)
    critical = critical_path(manifest)
    sequential = run_sequentially(request, args.llm_latency, args.image_latency, 4)

    table = Table(title=f"{args.clips}-clip storyboard, {args.image_latency}s per image, {args.llm_latency}s per LLM call")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("fleet wall time (submit → done)", f"{wall:.2f} s")
    table.add_row("critical path (manifest timings)", f"{critical:.2f} s")
    table.add_row("efficiency (critical path / wall)", f"{critical / wall:.3f}")
    table.add_row("sequential, one process (seeds' loop)", f"{sequential:.2f} s")
    table.add_row("speed-up over sequential", f"{sequential / wall:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
