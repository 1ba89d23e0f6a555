"""Helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import io
import json
import os
import time

from framefleet.config.celery import QUEUES
from framefleet.tasks.artifacts.store import ArtifactStore
from PIL import Image


def png_bytes(colour=(200, 40, 40), size=(64, 36)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def purge_queues(app) -> None:
    """Drop every message waiting in the fleet's queues, all priority lists (a broker that lost them).

    ``app.control.purge()`` would only empty the queues the app declares (`control`).
    """
    with app.connection_for_write() as connection:
        for queue in QUEUES:
            connection.default_channel.queue_purge(queue)


def run_job(app, kind: str, request: dict, store: ArtifactStore, timeout_s: float = 120.0):
    """Submit by task name, wait for the status record to reach done, return (status, manifest)."""
    from framefleet.workers.client import submit_job, wait_for_job

    job_id = submit_job(app, kind, request)
    status = wait_for_job(job_id, timeout_s=timeout_s)
    manifest = json.loads(store.get(f"jobs/{job_id}/manifest.json"))
    return status, manifest


def storyboard_request(job_id: str, clips: int = 3, **extra) -> dict:
    return {
        "job_id": job_id,
        "clips": [{"start_prompt": f"Clip {n} opens on a harbour at dawn",
                   "end_prompt": f"Clip {n} closes on the lighthouse at night"} for n in range(1, clips + 1)],
        **extra,
    }


def references_request(job_id: str, scenes: int = 3, **extra) -> dict:
    return {
        "job_id": job_id,
        "scene_prompts": [f"Scene {n}: the keeper walks the cliff path" for n in range(1, scenes + 1)],
        "consistency_markers": {"character": "grey-bearded keeper in a yellow coat"},
        "continuity_notes": ["the storm is coming"] * scenes,
        "consistency_guidelines": ["same coat in every scene"],
        "transition_notes": ["cut on the lantern swing"] * (scenes - 1),
        **extra,
    }


def stand_in_env(openai_api, replicate_api, openai_key: str = "sk-test", replicate_token: str = "r8-test") -> dict:
    """A fleet's environment for the official OpenAI and Replicate clients against the stand-ins
    (every input image through the files API, as in production)."""
    return {"OPENAI_API_KEY": openai_key, "OPENAI_BASE_URL": openai_api.base_url,
            "REPLICATE_API_TOKEN": replicate_token, "REPLICATE_BASE_URL": replicate_api.base_url,
            "FRAMEFLEET_REPLICATE_DATA_URL_MAX_BYTES": "0"}


def wait_until(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def unique_id(prefix: str) -> str:
    return f"{prefix}-{int(time.time() * 1000) % 10**9}-{os.getpid()}"



def put_reference(store: ArtifactStore, job_id: str, colour=(200, 40, 40)) -> str:
    """Upload a reference image the way a main app would; returns its artifact key."""
    key = f"uploads/{job_id}/reference.png"
    store.put(key, png_bytes(colour))
    return key


def stored_job(job_id: str) -> str:
    """A job's state in Redis, created the way a create step stores it, for tests that run one
    provider or ledger call of a job directly (the ledgers write only for a job that exists)."""
    from framefleet.config.settings import get_settings
    from framefleet.tasks.job.model import Job
    from framefleet.tasks.job.plan import build_frame_plan
    from framefleet.tasks.job.requests import JobConfig, parse_request
    from framefleet.tasks.job.spec import JobSpec

    request = parse_request("storyboard", storyboard_request(job_id, 1))
    settings = get_settings()
    Job(job_id).create(JobSpec(job_id=job_id, kind="storyboard", aspect_ratio=request.aspect_ratio,
                                    config=JobConfig.resolve(settings, request.overrides),
                                    plan=build_frame_plan(request), providers={"llm": "offline", "images": "replicate"},
                                    submitted=time.time()))
    return job_id


def create_here(kind: str, request: dict) -> str:
    """Run the create step in this process (no worker takes the enhancements it enqueues)."""
    from framefleet.tasks.steps.create import create_job

    return create_job(kind, request).job_id
