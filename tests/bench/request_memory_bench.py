"""Peak memory of the intake worker when it is sent an oversized request.

Issue 21 (4.7): a storyboard of 10,000 clips (about 80 MB of JSON) was parsed and validated in
full before the 64-frame limit refused it; the intake worker peaked near 600 MB and stayed at
460 MB. This starts one real intake worker (its production shape, threads 8), sends such a
request straight to the create task (``send_task``, as a main app that does not import framefleet
would; ``workers.client.submit_job`` refuses it before sending), waits for the refusal and prints
the worker's peak resident memory (VmHWM from /proc) and its resident memory after (VmRSS).

The Celery message is decoded by the worker before the task runs, so the message itself always
costs about its size; what the fleet controls is whether it then validates and builds the clips.

    python -m tests.bench.request_memory_bench [--clips 10000] [--prompt-chars 4000] [--as-text]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from framefleet.workers.fleet import Fleet
from framefleet.workers.local_redis import LocalRedis

SETTLE_S = 3.0  # after the refusal: let the worker's threads let go of the message before VmRSS is read
REFUSAL_TIMEOUT_S = 300.0  # the old code takes tens of seconds on a loaded machine; never wait for ever


def memory_mib(pid: int) -> dict[str, float]:
    """VmHWM (peak) and VmRSS (now) of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def oversized_storyboard(clips: int, prompt_chars: int) -> dict:
    # Every prompt is legal on its own (at the prompt limit): only the count is over the limits.
    prompt = ("a lighthouse keeper climbs the spiral stairs at dusk, lantern in hand " * 100)[:prompt_chars]
    return {"job_id": "oversized", "clips": [{"start_prompt": prompt, "end_prompt": prompt} for _ in range(clips)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=10_000)
    parser.add_argument("--prompt-chars", type=int, default=4000)
    parser.add_argument("--as-text", action="store_true", help="send the request as JSON text, not as an object")
    args = parser.parse_args()
    request = oversized_storyboard(args.clips, args.prompt_chars)
    text = json.dumps(request)
    payload = text if args.as_text else request
    with tempfile.TemporaryDirectory() as out, LocalRedis() as redis_server:
        env = {"FRAMEFLEET_BROKER_URL": redis_server.url, "FRAMEFLEET_STORE_URL": f"file://{out}",
               "FRAMEFLEET_LLM_PROVIDER": "offline", "FRAMEFLEET_IMAGE_PROVIDER": "offline",
               "FRAMEFLEET_SCORER": "heuristic"}
        os.environ.update(env)
        from framefleet.config.settings import get_settings
        from framefleet.workers.app import configure

        get_settings.cache_clear()
        app = configure()
        with Fleet(env, queues=("intake",), log_dir=os.path.join(out, "logs")) as fleet:
            pid = fleet.processes["intake"].pid
            idle = memory_mib(pid)
            started = time.monotonic()
            task_id = app.send_task("framefleet.storyboard.create", args=[payload]).id
            while (meta := app.backend.get_task_meta(task_id))["status"] not in ("SUCCESS", "FAILURE"):
                if time.monotonic() - started > REFUSAL_TIMEOUT_S:
                    raise TimeoutError(f"no answer from the intake worker within {REFUSAL_TIMEOUT_S} s")
                time.sleep(0.05)
            answered = time.monotonic() - started
            time.sleep(SETTLE_S)
            after = memory_mib(pid)
            restarts = list(fleet.restarts)
    outcome = meta["result"] if meta["status"] == "FAILURE" else meta["result"]
    if isinstance(outcome, dict) and "exc_message" in outcome:
        outcome = f"{outcome.get('exc_type')}: {' '.join(map(str, outcome['exc_message']))}"
    print(f"a storyboard of {args.clips} clips ({len(text) / 1e6:.1f} MB as JSON, sent as "
          f"{'JSON text' if args.as_text else 'a JSON object'}) to one intake worker (threads 8):")
    print(f"  answer after {answered:.1f} s: {meta['status']} {str(outcome)[:160]}")
    print(f"  intake peak RSS {after['VmHWM']:7.0f} MiB, RSS after {after['VmRSS']:7.0f} MiB "
          f"(idle {idle['VmRSS']:5.0f} MiB)" + (f"; worker restarted: {restarts}" if restarts else ""))


if __name__ == "__main__":
    main()
