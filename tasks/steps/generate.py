"""Generate one variation of a frame's round (images queue; a chord header).

One paid image, stored under its deterministic key (a redelivered or re-driven copy finds it
stored and returns its record instead of paying again), or a failure record: a provider failure
is retried once as a new attempt (a paid call the budget must allow), then recorded, so one bad
variation never stops the frame. A straggler cut or a cancel stops the provider mid-call
(``straggler_check``) and is recorded, not retried.
"""

from __future__ import annotations

import logging
import time

from framefleet.tasks.artifacts.keys import variation_key, variation_seed
from framefleet.tasks.artifacts.store import fleet_store
from framefleet.tasks.coordination.budget import BudgetGuard
from framefleet.tasks.coordination.dispatch import straggler_check
from framefleet.tasks.coordination.leases import Stored
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import FrameRecord, VariationRecord
from framefleet.tasks.job.states import PromptSource
from framefleet.tasks.providers import image_generator
from framefleet.tasks.providers.base import GenerationStopped, ImageRequest

log = logging.getLogger(__name__)


class RetryGeneration(Exception):
    """A provider failure with a retry left: the variation is generated again as a new attempt."""


def prompt_for(record: FrameRecord, source: str) -> str:
    """The prompt a round generates from, and so the prompt its images are scored against."""
    if source == PromptSource.ORIGINAL:
        return record.original_prompt
    return record.enhanced_prompt or record.original_prompt


def stored_variation(job: Job, frame: str, revision: int, source: str, index: int) -> Stored[VariationRecord]:
    """The variation's record once it is stored (an image whose record exists but whose file is
    gone is made again)."""
    def parse(raw: str | None) -> VariationRecord | None:
        record = VariationRecord.model_validate_json(raw) if raw else None
        if record is None or (record.key and not fleet_store().exists(record.key)):
            return None
        return record

    return Stored(job.rounds.variation_read(frame, revision, source, index), parse)


def generate_variation(job: Job, frame: str, source: str, index: int, revision: int, count: int,
                       attempt: int, retries_left: int) -> VariationRecord:
    """One paid image (of a round of ``count``): stored and recorded, or a failure record."""
    record, costs = generate(job, frame, source, index, revision, count, attempt, retries_left)
    if record.error != "cancelled":
        job.rounds.save_variation(frame, revision, source, record, costs)
    return record


def generate(job: Job, frame: str, source: str, index: int, revision: int, count: int, attempt: int,
             retries_left: int) -> tuple[VariationRecord, dict[str, int]]:
    """The variation's record, and the cost counters it adds."""
    store, (spec, record) = fleet_store(), job.spec_and_frame(frame)
    config = spec.frame_config(record)
    key = variation_key(job.id, frame, source, index, revision)
    started = time.time()
    queue_wait = round(started - record.timings.enqueued, 3) if record.timings.enqueued else None

    def failure(reason: str) -> VariationRecord:
        return VariationRecord(index=index, prompt_source=source, error=reason, timing=(started, time.time()),
                               queue_wait=queue_wait)

    try:
        png = image_generator().generate(ImageRequest(
            prompt=prompt_for(record, source), aspect_ratio=spec.aspect_ratio, variation=index, attempt=attempt,
            seed=variation_seed(job.id, frame, source, index, attempt, revision), model=config.image_model,
            job_id=job.id, frame=frame, ledger_key=f"{key}#{attempt}",
            input_images=[store.get(k) for k in record.inputs],
        ), should_stop=straggler_check(job, frame, revision, source, count, started))
        store.put(key, png, "image/png")
    except GenerationStopped as stop:  # a straggler cut or a cancel: not retried
        reason = str(stop)
        if reason == "cancelled":
            return failure(reason), {}
        log.warning("variation %s of %s/%s: %s", index, job.id, frame, reason)
        return failure(reason), {"straggler_cuts": 1}
    except Exception as error:  # provider or store failure: retry once, then a failure record
        if retries_left > 0 and BudgetGuard(job, spec).another_image(frame, config.image_model,
                                                                     f"retry of variation {index}"):
            log.warning("variation %s of %s/%s failed (%s); retrying once", index, job.id, frame, error)
            raise RetryGeneration(str(error)) from error
        log.warning("variation %s of %s/%s failed after a retry: %s", index, job.id, frame, error)
        return failure(str(error)), {}
    return VariationRecord(index=index, key=key, prompt_source=source, timing=(started, time.time()),
                           queue_wait=queue_wait), {"images_stored": 1}
