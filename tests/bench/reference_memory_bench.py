"""Peak memory of the workers while jobs with a large (legal) reference image run.

Issue 9: a 6500×6000 PNG is under both caps; decoded at full size by every variation, scoring and
the contact sheet, four such jobs took an images worker to 4.4 GB. This starts a fleet (images:
threads, 8), runs N storyboards at once whose reference is such an image, and prints each worker's
peak resident memory (VmHWM from /proc). The figures behind the memory requests in deploy/.

    python -m tests.bench.reference_memory_bench [--jobs 4] [--side 6500x6000] [--mode RGB]
        [--images-threads 8] [--image-latency 1]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

from framefleet.tasks.artifacts.store import open_store
from framefleet.workers.fleet import Fleet
from framefleet.workers.local_redis import LocalRedis
from PIL import Image


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def large_reference(size: tuple[int, int], mode: str) -> bytes:
    """A photo-sized PNG that compresses to a small file (a gradient)."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--side", default="6500x6000")
    parser.add_argument("--mode", default="RGB", choices=["RGB", "RGBA"])
    parser.add_argument("--images-threads", type=int, default=8)
    parser.add_argument("--image-latency", type=float, default=1.0,
                        help="simulated provider seconds per image: variations then decode at the same time")
    args = parser.parse_args()
    size = tuple(int(n) for n in args.side.split("x"))
    reference = large_reference(size, args.mode)
    shapes = {"control": ("threads", 4), "llm": ("threads", 8), "images": ("threads", args.images_threads),
              "gpu": ("solo", 1)}
    with tempfile.TemporaryDirectory() as out, LocalRedis() as redis_server:
        env = {"FRAMEFLEET_BROKER_URL": redis_server.url, "FRAMEFLEET_STORE_URL": f"file://{out}",
               "FRAMEFLEET_LLM_PROVIDER": "offline", "FRAMEFLEET_IMAGE_PROVIDER": "offline",
               "FRAMEFLEET_SCORER": "heuristic", "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": str(args.image_latency)}
        os.environ.update(env)
        from framefleet.config.settings import get_settings
        from framefleet.workers.app import configure
        from framefleet.workers.client import submit_job, wait_for_job

        get_settings.cache_clear()
        app = configure()
        store = open_store(f"file://{out}")
        with Fleet(env, shapes=shapes, log_dir=os.path.join(out, "logs")) as fleet:
            idle = {name: peak_rss_mib(p.pid) for name, p in fleet.processes.items()}
            started = time.time()
            job_ids = []
            for n in range(args.jobs):
                store.put(f"uploads/ref-{n}.png", reference, "image/png")
                job_ids.append(submit_job(app, "storyboard", {
                    "job_id": f"memory-{n}", "reference_image": f"uploads/ref-{n}.png",
                    "clips": [{"start_prompt": "a harbour at dawn", "end_prompt": "the lighthouse at night"}]}))
            for job_id in job_ids:
                status = wait_for_job(job_id, timeout_s=900)
                assert status.state == "done" and status.outcome == "succeeded", status
            wall = time.time() - started
            peak = {name: peak_rss_mib(p.pid) for name, p in fleet.processes.items()}
    print(f"{args.jobs} storyboards at once (1 clip, 2 frames, 4 variations) with a {args.side} {args.mode} PNG "
          f"reference ({len(reference) // 1024} KiB), images worker threads {args.images_threads}: {wall:.0f} s")
    for name in peak:
        print(f"  {name:8s} peak RSS {peak[name]:7.0f} MiB (idle {idle[name]:5.0f} MiB)")


if __name__ == "__main__":
    main()
