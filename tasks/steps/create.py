"""Create a job (intake queue: validating a request and fetching its reference never holds up a
selection or a finalize).

Everything is validated before anything is written: a bad request raises RequestError naming
the field. The create is all-or-nothing: the job id is claimed first, and if storing the reference
or enqueueing the enhancements fails, every key of the job is deleted again and its id is free.
Then every frame's enhancement is enqueued at once (per-frame readiness starts each frame as soon
as its own enhancement is stored).
"""

from __future__ import annotations

import logging
import time

from framefleet.config.celery import ENHANCE_PROMPT
from framefleet.config.settings import Settings, get_settings
from framefleet.tasks.artifacts.inputs import fetch_url, is_url, normalise_image
from framefleet.tasks.artifacts.keys import reference_key
from framefleet.tasks.artifacts.store import fleet_store
from framefleet.tasks.coordination.dispatch import send_all, signature
from framefleet.tasks.job.errors import JobExists, RequestError
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.plan import build_frame_plan
from framefleet.tasks.job.records import CreateResult
from framefleet.tasks.job.requests import REFERENCE_FIELDS, JobConfig, parse_request
from framefleet.tasks.job.spec import JobSpec
from framefleet.tasks.providers import image_provider_name, llm_provider_name
from framefleet.tasks.providers.adapters import image_model_registry
from framefleet.tasks.runtime import tracing

log = logging.getLogger(__name__)


def create_job(kind: str, payload) -> CreateResult:
    settings = get_settings()
    # parse_request first bounds the raw payload (precheck_request: bytes, counts), so an
    # oversized request is refused before any of it is validated or built.
    request = parse_request(kind, payload, settings, image_model_registry())
    job = Job(request.job_id)
    if job.exists():
        raise JobExists(f"job_id: a job {request.job_id!r} already exists")
    field = REFERENCE_FIELDS[kind]
    source = getattr(request, field)
    reference_png = load_reference(source, field, settings) if source else None
    if reference_png is not None:
        request = request.model_copy(update={field: reference_key(request.job_id)})
    plan = build_frame_plan(request)
    config = JobConfig.resolve(settings, request.overrides)
    providers = {"llm": llm_provider_name(settings), "images": image_provider_name(settings)}
    if config.judge == "vlm":  # the judge asks the LLM provider's account
        providers["judge"] = providers["llm"]
    spec = JobSpec(job_id=request.job_id, kind=kind, aspect_ratio=request.aspect_ratio, config=config, plan=plan,
                   providers=providers, submitted=time.time(), callback=request.callback,
                   trace=tracing.job_carrier())
    job.create(spec)  # claims the id: from here on a failure must give it back
    try:
        if reference_png is not None:
            fleet_store().put(reference_key(request.job_id), reference_png, "image/png")
        job.created()
        send_all(job, [signature(ENHANCE_PROMPT, (request.job_id, frame.name)) for frame in plan.frames])
    except Exception:
        log.exception("create of %s failed half-way; deleting it", request.job_id)
        job.discard()
        raise
    return CreateResult(job_id=request.job_id, frames=len(plan.frames))


def load_reference(source: str, field: str, settings: Settings) -> bytes:
    """The reference image as validated PNG bytes, from a store key or an http(s) URL."""
    if is_url(source):
        return normalise_image(fetch_url(source, field, settings), field, settings)
    try:
        return normalise_image(fleet_store().get(source), field, settings)
    except KeyError:
        raise RequestError(f"{field}: no artifact {source!r} in the store") from None
