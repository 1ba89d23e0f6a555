"""The Celery tasks of a job.

  create [intake] ─ enhance(frame) for every frame [llm], all at once
  frame k, once its enhancement is stored and frame k-1 is settled (tasks/coordination/dispatch.py):
      chord(generate_variation × n [images]) → score_variations [gpu] → select [control]
  select stores frame k's selection, then enqueues the next ready frame, or finalize [control].

Tasks are thin: parse the small JSON payload, call a plain function, write artifacts, return
small JSON (artifact keys and numbers). No task waits on another task's result.

Every step is race-free: it takes a lease (tasks/job/leases.py) before it works, a second copy waits
for the first copy's stored result (or takes over when the first died) and never pays twice,
and frame records change only by compare-and-set (``JobState.update_frame``), so a late duplicate
cannot write an old state back.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, wait

import kombu.exceptions
import redis
from celery.exceptions import Retry
from PIL import Image
from pydantic import ValidationError

from framefleet.config.celery import (CANCEL_JOB, CHOOSE_CANDIDATE, CREATE_REFERENCES, CREATE_STORYBOARD,
                                      ENHANCE_PROMPT, FINALIZE_JOB, GENERATE_VARIATION, JOB_STATUS, LIST_JOBS,
                                      NOTIFY_MAIN_APP, REGENERATE_FRAME, RESUME_JOB, SCORE_VARIATIONS, SELECT_VARIATION,
                                      TASK_QUEUES, WATCHDOG)
from framefleet.config.settings import get_settings
from framefleet.scoring import MetricScores, Ranked, overall_score, rank_images_by_quality
from framefleet.tasks.coordination.budget import BudgetGuard
from framefleet.tasks.artifacts.contact_sheet import candidate_thumbnail
from framefleet.tasks.artifacts.keys import GENERATION_TRACE
from framefleet.tasks.steps.enhance import BudgetExhausted, enhance_prompt_iterative
from framefleet.tasks.artifacts.keys import (ENHANCED, ORIGINAL, frame_key, manifest_key, reference_key, revision_of, thumbnail_key,
                                   trace_key,
                        variation_key, variation_seed)
from framefleet.tasks.job.leases import Lease, wait_for
from framefleet.tasks.artifacts.manifest import build_manifest, decode_image, estimate_cost, write_contact_sheet
from framefleet.tasks.job.plan import build_frame_plan
from framefleet.tasks.providers.adapters import image_model_registry
from framefleet.tasks.steps import iterate
from framefleet.tasks.job.records import (MAX_LIST_LIMIT, Budget, CancelResult, CompletionCallback, CreateResult,
                                      Enhancement, FrameRecord, JobStatus, JobSummary, ResumeResult, Scores,
                                      Selection, VariationRecord)
from framefleet.tasks.coordination.recovery import resume, watchdog_round
from framefleet.tasks.job.requests import JobConfig, REFERENCE_FIELDS, RequestError, parse_request
from framefleet.tasks.coordination.dispatch import (NEW_JOB, RETRY_WITH_ORIGINAL_PROMPT, dispatch_ready, planned_round_size, send,
                                        straggler_check)
from framefleet.tasks.coordination.slot_hold import HoldsSlot, slot_hold_due
from framefleet.tasks.job.errors import JobExists
from framefleet.tasks.job.state import JobSpec, JobState, StaleWrite, active_job_ids, parked_jobs, recent_jobs
from framefleet.tasks.app import app
from framefleet.tasks.runtime.bootstrap import process_scorer
from framefleet.tasks.coordination.broker import admit_round
from framefleet.tasks.artifacts.inputs import fetch_url, is_url, normalise_image
from framefleet.tasks.providers import image_generator, image_provider_name, llm_provider_name, prompt_agents
from framefleet.tasks.providers.base import GenerationStopped, ImageRequest
from framefleet.tasks.providers.ratelimit import RateLimitDeadline
from framefleet.tasks.artifacts.store import fleet_store, in_background, read_in_parallel

log = logging.getLogger(__name__)

GENERATION_RETRY_DELAY_S = 1.0
THUMBNAIL_WAIT_S = 2.0  # scoring's wait for its contact-sheet thumbnails, beyond the scorer's own time


def prompt_for(record: FrameRecord, stage: str) -> str:
    """The prompt a stage generates from, and so the prompt its images are scored against."""
    return record.original_prompt if stage == ORIGINAL else (record.enhanced_prompt or record.original_prompt)


class JobCancelled(Exception):
    pass


def _raise_if_cancelled(state: JobState) -> None:
    if state.cancelled():
        raise JobCancelled(state.job_id)


def claim_step(state: JobState, step: str, outcome) -> tuple[object, Lease | None]:
    """(stored outcome, None) when the step's outcome exists — now or once the copy running it
    finishes — else (None, lease) with this copy holding the step's lease."""
    return wait_for(outcome, state.lease(step))


# Create (intake queue: validating and fetching a reference never holds up select/finalize) ---
def load_reference(source: str, field: str, settings) -> bytes:
    """The reference image as validated PNG bytes, from a store key or an http(s) URL."""
    if is_url(source):
        return normalise_image(fetch_url(source, field, settings), field, settings)
    try:
        return normalise_image(fleet_store().get(source), field, settings)
    except KeyError:
        raise RequestError(f"{field}: no artifact {source!r} in the store") from None


def submit_job(kind: str, payload) -> dict:
    """Validate everything, then store the job and enqueue every frame's enhancement.

    Bad input raises RequestError naming the field before anything is written or enqueued. The
    create is all-or-nothing: if storing the reference or enqueueing fails, the job is deleted
    again and its id is free.
    """
    settings = get_settings()
    # parse_request first bounds the raw payload (precheck_request: bytes, counts), so an
    # oversized request is refused before any of it is validated or built.
    request = parse_request(kind, payload, settings, image_model_registry())
    state = JobState(request.job_id)
    if state.exists():
        raise JobExists(f"job_id: a job {request.job_id!r} already exists")
    field = REFERENCE_FIELDS[kind]
    source = getattr(request, field)
    reference_png = load_reference(source, field, settings) if source else None
    if reference_png is not None:
        request = request.model_copy(update={field: reference_key(request.job_id)})
    plan = build_frame_plan(request)
    spec = JobSpec(
        job_id=request.job_id, kind=kind, aspect_ratio=request.aspect_ratio,
        config=JobConfig.resolve(settings, request.overrides), plan=plan,
        providers={"llm": llm_provider_name(settings), "images": image_provider_name(settings)},
        submitted=time.time(), callback=request.callback,
    )
    state.create(spec)  # claims the id: from here on a failure must give it back
    try:
        if reference_png is not None:
            fleet_store().put(reference_key(request.job_id), reference_png, "image/png")
        state.created()
        for frame in plan.frames:
            send(state, ENHANCE_PROMPT, (request.job_id, frame.name))
    except Exception:
        log.exception("create of %s failed half-way; deleting it", request.job_id)
        state.discard()
        raise
    return CreateResult(job_id=request.job_id, frames=len(plan.frames)).model_dump(mode="json")


def _the_request(kind: str, args: tuple, kwargs: dict):
    """The create tasks take exactly one argument, the request (positional or ``request=``)."""
    given = list(args) + ([kwargs.pop("request")] if "request" in kwargs else [])
    if kwargs:
        raise RequestError(f"request: unexpected keyword arguments {sorted(kwargs)}")
    if len(given) != 1:
        raise RequestError(f"request: framefleet.{kind}.create takes exactly one argument, the request "
                           f"(a JSON object or JSON text); got {len(given)}")
    return given[0]


@app.task(name=CREATE_STORYBOARD)
def create_storyboard(*args, **kwargs) -> dict:
    return submit_job("storyboard", _the_request("storyboard", args, kwargs))


@app.task(name=CREATE_REFERENCES)
def create_references(*args, **kwargs) -> dict:
    return submit_job("references", _the_request("references", args, kwargs))


@app.task(name=JOB_STATUS)
def job_status(job_id: str) -> dict:
    return JobState(job_id).status().model_dump(mode="json")


# Enhancement (llm) --------------------------------------------------------------------------
class StateLedger:
    """The LLM ledger of one frame's enhancement, in Redis (see framefleet.tasks.steps.enhance.RoundLedger)."""

    def __init__(self, state: JobState, frame: str, prompt: str):
        self.state, self.frame, self.prompt = state, frame, prompt

    def get(self, iteration: int, agent: str) -> str | None:
        return self.state.llm_reply(self.frame, self.prompt, iteration, agent)

    def put(self, iteration: int, agent: str, reply: str) -> None:
        self.state.save_llm_reply(self.frame, self.prompt, iteration, agent, reply)


def enhance_frame(state: JobState, frame: str) -> Enhancement | None:
    """Run the two-agent loop for one frame and store the result; None when cancelled."""
    spec, settings, store, record = state.spec(), get_settings(), fleet_store(), state.frame(frame)
    config = spec.frame_config(record)
    guard = BudgetGuard(state, spec)
    started = time.time()
    fallback_note = None
    agents = None
    if not config.enhance:  # the job asked for the original prompt (e.g. an evaluation baseline)
        enhanced, enhancement = record.original_prompt, Enhancement(skipped=True)
    else:
        try:
            if "enhancement" in settings.inject_faults:
                raise RuntimeError("injected fault: enhancement")
            agents = prompt_agents(settings, f"{state.job_id}/{frame}")
            result = enhance_prompt_iterative(
                record.original_prompt, agents,
                max_iterations=config.max_enhancement_iterations, score_threshold=config.score_threshold,
                convergence_epsilon=config.convergence_epsilon,
                trace=lambda name, text: None if state.closed() else store.put(
                    trace_key(state.job_id, frame, name), text.encode(), "text/plain"),
                check_cancelled=lambda: _raise_if_cancelled(state),
                ledger=StateLedger(state, frame, record.original_prompt),
                may_start_round=lambda iteration: guard.llm_round(
                    frame, iteration, sum(f.status == "pending" for f in state.frames().values()),
                    record.original_prompt),
            )
            enhanced = result.final_prompt
            enhancement = Enhancement(iterations=len(result.rounds), final_score=result.final_score)
        except JobCancelled:
            return None
        except BudgetExhausted as error:
            enhanced, enhancement = record.original_prompt, Enhancement(fallback=True, error=str(error))
            fallback_note = "enhancement skipped (budget): original prompt, single image"
        except RateLimitDeadline as error:  # queued past openai_rate_limit_max_wait_s: the last resort
            log.warning("enhancement rate limited for %s/%s: %s", state.job_id, frame, error)
            enhanced, enhancement = record.original_prompt, Enhancement(fallback=True, error=str(error))
            fallback_note = "enhancement failed (rate limited): original prompt, single image"
        except Exception as error:  # any failure of the LLM stage takes the seeds' fallback
            log.warning("enhancement failed for %s/%s: %s; using the original prompt", state.job_id, frame, error)
            enhanced, enhancement = record.original_prompt, Enhancement(fallback=True, error=str(error))
            fallback_note = "enhancement failed: original prompt, single image"
    if getattr(agents, "usage", None):
        state.add_costs(frame, **agents.usage)

    def store_enhancement(current: FrameRecord) -> None:
        if current.enhanced_prompt is not None:
            raise StaleWrite(f"{frame} is already enhanced")
        if (current.original_prompt, current.revision) != (record.original_prompt, record.revision):
            raise StaleWrite(f"{frame} has a new prompt since this enhancement started")  # a regenerate
        current.enhanced_prompt, current.enhancement = enhanced, enhancement
        current.timings.enhance = (started, time.time())
        if fallback_note:
            current.fallbacks.append(fallback_note)

    state.update_frame(frame, store_enhancement)
    state.prompt_enhanced(spec.kind, len(spec.plan.frames))
    return enhancement


@app.task(name=ENHANCE_PROMPT)
def enhance_prompt(job_id: str, frame: str) -> dict:
    state = JobState(job_id)

    def enhanced():
        record = state.frame(frame)
        return record.enhancement if record.enhanced_prompt is not None else None

    enhancement, lease = claim_step(state, f"enhance:{frame}", enhanced)
    if lease is None:
        dispatch_ready(state)
    else:
        try:
            try:
                enhancement = enhance_frame(state, frame)
            except StaleWrite:  # another copy stored it first (its lease had expired)
                enhancement = enhanced()
            dispatch_ready(state)  # inside the lease: if this fails, the watchdog re-drives the step
        except BaseException:
            lease.release(finished=False)
            raise
        lease.release(finished=True)
    if enhancement is None:
        return {"frame": frame, "cancelled": True}
    return {"frame": frame, "fallback": enhancement.fallback}


# Generation (images; chord header: never raises for a provider failure) --------------------
@app.task(bind=True, base=HoldsSlot, name=GENERATE_VARIATION, max_retries=1)
def generate_variation(self, job_id: str, frame: str, stage: str, index: int, revision: int = 0,
                        round_size: int | None = None) -> dict:
    if self.request.group and (self.request.delivery_info or {}).get("priority") == NEW_JOB:
        # A new job's frame runs in one piece: its siblings take the next free slots.
        try:
            if moved := admit_round(TASK_QUEUES[self.name], self.request.group):
                log.info("job %s: admitted %d more variations of %s", job_id, moved, frame)
        except (redis.RedisError, OSError, kombu.exceptions.KombuError) as error:  # an optimisation only
            log.warning("job %s: could not admit the rest of %s's round: %s", job_id, frame, error)
    state, store = JobState(job_id), fleet_store()
    if state.cancelled():  # checked before any paid call
        return VariationRecord(index=index, prompt_source=stage, error="cancelled").model_dump(mode="json")

    def stored():
        record = state.variation(frame, revision, stage, index)
        if record is None or (record.key and not store.exists(record.key)):
            return None
        return record.model_dump(mode="json")  # redelivered: never pay for an image twice

    result, lease = claim_step(state, f"generate:{frame}/{revision}/{stage}/{index}", stored)
    if lease is None:
        return result
    try:
        spec = state.spec()
        count = round_size or planned_round_size(stage, spec.frame_config(state.frame(frame)))  # older messages: none
        try:
            record = generate_one(state, spec, frame, stage, index, revision, count, attempt=self.request.retries)
        except RetryGeneration as error:
            raise self.retry(exc=error.__cause__, countdown=GENERATION_RETRY_DELAY_S) from error
        if record.error != "cancelled":
            state.save_variation(frame, revision, stage, record)
    except Retry:
        lease.release(finished=True)  # the retry is a new, queued message
        raise
    except BaseException:
        lease.release(finished=False)  # the watchdog re-drives it
        raise
    lease.release(finished=True)
    try:  # the hold itself runs after the record is returned and counted (HoldsSlot.after_return)
        self.request.slot_hold = slot_hold_due(state, spec, frame, revision, stage, count)
    except Exception as error:  # noqa: BLE001 — an optimisation: a chord header never raises for it
        log.warning("job %s: no slot hold after %s's variation %s: %s", job_id, frame, index, error)
    return record.model_dump(mode="json")


class RetryGeneration(Exception):
    """A provider failure with a retry left: Celery retries the task as a new attempt."""


def generate_one(state: JobState, spec: JobSpec, frame: str, stage: str, index: int, revision: int, count: int,
                 attempt: int) -> VariationRecord:
    """One paid image (of a round of ``count``): stored under its deterministic key, or a failure record."""
    store, record = fleet_store(), state.frame(frame)
    config = spec.frame_config(record)
    key = variation_key(state.job_id, frame, stage, index, revision)
    started = time.time()
    queue_wait = round(started - record.timings.enqueued, 3) if record.timings.enqueued else None
    try:
        png = image_generator().generate(ImageRequest(
            prompt=prompt_for(record, stage), aspect_ratio=spec.aspect_ratio, variation=index, attempt=attempt,
            seed=variation_seed(state.job_id, frame, stage, index, attempt, revision), model=config.image_model,
            job_id=state.job_id, frame=frame, ledger_key=f"{key}#{attempt}",
            input_images=[store.get(k) for k in record.inputs],
        ), should_stop=straggler_check(state, frame, revision, stage, count, started))
        store.put(key, png, "image/png")
        state.add_costs(frame, images_stored=1)
    except GenerationStopped as stop:  # a straggler cut or a cancel: not retried
        reason = str(stop)
        if reason != "cancelled":
            log.warning("variation %s of %s/%s: %s", index, state.job_id, frame, reason)
            state.add_costs(frame, straggler_cuts=1)
        return VariationRecord(index=index, prompt_source=stage, error=reason, timing=(started, time.time()),
                               queue_wait=queue_wait)
    except Exception as error:  # provider or store failure: retry once, then a failure record
        if attempt < generate_variation.max_retries and BudgetGuard(state, spec).another_image(
                frame, config.image_model, f"retry of variation {index}"):
            log.warning("variation %s of %s/%s failed (%s); retrying once", index, state.job_id, frame, error)
            raise RetryGeneration(str(error)) from error
        log.warning("variation %s of %s/%s failed after a retry: %s", index, state.job_id, frame, error)
        return VariationRecord(index=index, prompt_source=stage, error=str(error), timing=(started, time.time()),
                               queue_wait=queue_wait)
    return VariationRecord(index=index, key=key, prompt_source=stage, timing=(started, time.time()),
                           queue_wait=queue_wait)


# Scoring (gpu) ---------------------------------------------------------------------------
def score_frame(prompt: str, variations: list[VariationRecord], input_keys: list[str],
                weights: dict, aspect_ratio: str) -> tuple[str, list[str]]:
    """Score every generated variation of a frame in one batch; fills ``scores`` in place.

    Returns the scorer's name and a note per metric that failed (its weight went to the others).
    """
    store = fleet_store()
    generated = [v for v in variations if v.key]
    if "scoring" in get_settings().inject_faults:
        raise RuntimeError("injected fault: scoring")
    scorer = process_scorer()
    keys = [v.key for v in generated] + (input_keys if scorer.scores_consistency else [])
    images = read_in_parallel(lambda key: decode_image(store.get(key)), keys)

    def store_thumbnail(candidate: tuple[VariationRecord, Image.Image]) -> None:
        variation, image = candidate
        store.put(thumbnail_key(variation.key), candidate_thumbnail(image, aspect_ratio), "image/png")

    # The contact sheet's thumbnails, from the images just decoded, while the scorer runs: so the
    # sheet, drawn at finalize on the job's critical path, need not decode every candidate again.
    thumbnails = in_background(store_thumbnail, zip(generated, images[:len(generated)], strict=True))
    try:
        metrics: list[MetricScores] = scorer.score(prompt, images[:len(generated)], images[len(generated):])
    finally:
        record_thumbnails(generated, thumbnails)
    notes: dict[str, str] = {}
    for variation, m in zip(generated, metrics, strict=True):
        variation.scores = Scores(pickscore=m.pickscore, clip_score=m.clip_score, aesthetic=m.aesthetic,
                                  overall=overall_score(m, weights), consistency=m.consistency)
        notes.update(m.errors)
    return scorer.name, [f"{metric} failed ({why}); overall re-weighted over the other metrics"
                         for metric, why in sorted(notes.items())]


def record_thumbnails(generated: list[VariationRecord], writes: list[Future]) -> None:
    """Name in each record the thumbnail its write stored; the sheet decodes the full image of
    the others. Waited for at most THUMBNAIL_WAIT_S, so a hung store holds no round up."""
    wait(writes, timeout=THUMBNAIL_WAIT_S)
    for variation, written in zip(generated, writes, strict=True):
        if not written.done():
            log.warning("contact-sheet thumbnail of %s not written in %s s", variation.key, THUMBNAIL_WAIT_S)
        elif error := written.exception():
            log.warning("no contact-sheet thumbnail of %s: %s", variation.key, error)
        else:
            variation.thumbnail_key = thumbnail_key(variation.key)


def score_round(state: JobState, frame: str, variations: list[VariationRecord]) -> dict:
    spec, record = state.spec(), state.frame(frame)
    started = time.time()
    scorer, error, notes = None, None, []
    if any(v.key for v in variations):
        try:
            scorer, notes = score_frame(prompt_for(record, variations[0].prompt_source), variations, record.inputs,
                                        spec.config.score_weights.model_dump(), spec.aspect_ratio)
        except Exception as exc:  # the seeds' fallback: first generated image, unranked
            log.warning("scoring failed for %s/%s: %s", state.job_id, frame, exc)
            error = str(exc)
    return {"variations": [v.model_dump(mode="json") for v in variations], "scorer": scorer, "error": error,
            "notes": notes, "timing": [started, time.time()]}


@app.task(name=SCORE_VARIATIONS)
def score_variations(results: list[dict], job_id: str, frame: str, revision: int = 0) -> dict:
    state = JobState(job_id)
    variations = [VariationRecord.model_validate(r) for r in results]
    stage = variations[0].prompt_source if variations else ENHANCED
    if state.cancelled():
        return {"variations": results, "scorer": None, "error": None, "notes": [], "timing": None}
    scored, lease = claim_step(state, f"score:{frame}/{revision}/{stage}",
                               lambda: state.scored(frame, revision, stage))
    if lease is None:
        return scored
    try:
        scored = score_round(state, frame, variations)
        state.save_scored(frame, revision, stage, scored)
    except BaseException:
        lease.release(finished=False)
        raise
    lease.release(finished=True)
    return scored


# Selection (control) ---------------------------------------------------------------------
def select_best_variation(variations: list[VariationRecord], scoring_error: str | None,
                          fallbacks: list[str]) -> VariationRecord:
    """Rank 1 of the scored variations; the seeds' fallbacks when scoring or ranking failed."""
    generated = [v for v in variations if v.key]
    if scoring_error is not None:
        fallbacks.append("scoring failed: first generated image, unranked")
        return generated[0]
    scored = [v for v in generated if v.scores is not None and v.scores.overall is not None]
    try:
        if "ranking" in get_settings().inject_faults:
            raise RuntimeError("injected fault: ranking")
        ranked = rank_images_by_quality(
            [Ranked(index=v.index, overall=v.scores.overall, pickscore=v.scores.pickscore) for v in scored])
    except Exception as error:
        log.warning("ranking failed: %s", error)
        fallbacks.append("ranking failed: first scored image")
        return (scored or generated)[0]
    if not ranked:
        fallbacks.append("ranking failed: no overall score, first generated image")
        return generated[0]
    by_index = {v.index: v for v in scored}
    for rank, candidate in enumerate(ranked, start=1):
        by_index[candidate.index].rank = rank
    return by_index[ranked[0].index]


def round_settled(record: FrameRecord, revision: int, stage: str) -> bool:
    """Whether the outcome of this generation round of the frame is stored."""
    return (record.revision != revision or record.status != "pending"
            or (stage == ENHANCED and RETRY_WITH_ORIGINAL_PROMPT in record.fallbacks))


def select_round(state: JobState, frame: str, stage: str, revision: int, scored: dict) -> FrameRecord:
    """Store the frame's selection (or failure) for this round; StaleWrite if it is settled."""
    spec, store = state.spec(), fleet_store()
    threshold = spec.frame_config(state.frame(frame)).quality_threshold
    variations = [VariationRecord.model_validate(v) for v in scored["variations"]]
    fallbacks: list[str] = [f"variation {v.index} failed: {v.error}" for v in variations if v.error]
    chosen = select_best_variation(variations, scored["error"], fallbacks) if any(v.key for v in variations) else None
    selected_key = frame_key(state.job_id, frame, revision)
    if chosen is not None:
        store.copy(chosen.key, selected_key, "image/png")

    def store_selection(record: FrameRecord) -> None:
        if round_settled(record, revision, stage):
            raise StaleWrite(f"{frame} round {revision}/{stage} is already settled")
        record.variations = [v for v in record.variations if v.prompt_source != stage] + variations
        record.timings.variations += [v.timing for v in variations if v.timing]
        record.timings.score = tuple(scored["timing"]) if scored.get("timing") else None
        record.scorer = scored["scorer"] or record.scorer
        record.warnings += scored.get("notes", [])
        record.fallbacks += fallbacks
        if chosen is None and stage == ENHANCED:
            record.fallbacks.append(RETRY_WITH_ORIGINAL_PROMPT)
            return
        if chosen is None:
            record.status = "failed"
            record.fallbacks.append("generation failed: frame failed")
            return
        overall = chosen.scores.overall if chosen.scores else None
        record.selected = Selection(index=chosen.index, key=chosen.key, frame_key=selected_key, overall=overall)
        record.status = "succeeded"
        if overall is not None and overall < threshold:
            record.warnings.append(f"quality {overall:.1f} is below the threshold {threshold:.1f}")

    record = state.update_frame(frame, store_selection)
    if record.status == "failed":
        log.error("frame %s/%s failed: no image could be generated", state.job_id, frame)
    elif record.selected is not None:
        for warning in record.warnings:
            if warning.startswith("quality "):
                log.warning("%s/%s: %s; keeping the image", state.job_id, frame, warning)
        log.info("%s/%s selected v%s (overall %s)", state.job_id, frame, record.selected.index,
                 record.selected.overall)
    for fallback in fallbacks:
        log.warning("%s/%s: %s", state.job_id, frame, fallback)
    if not state.closed():
        store.put(trace_key(state.job_id, frame, GENERATION_TRACE), record.model_dump_json(indent=2).encode(),
                  "application/json")
    return record


@app.task(name=SELECT_VARIATION)
def select_variation(scored: dict, job_id: str, frame: str, stage: str, revision: int = 0) -> None:
    state = JobState(job_id)
    if state.cancelled():  # the cancel finalizes the job; keep only what was finished before
        return
    settled = lambda: True if round_settled(state.frame(frame), revision, stage) else None  # noqa: E731
    _, lease = claim_step(state, f"select:{frame}/{revision}/{stage}", settled)
    if lease is None:
        dispatch_ready(state)
        return
    try:
        spec = state.spec()
        frames = state.frames()
        state.frame_stage(spec.kind, "score", frame, sum(f.status != "pending" for f in frames.values()),
                          len(frames))
        try:
            select_round(state, frame, stage, revision, scored)
        except StaleWrite:
            pass  # another copy stored this round's outcome first
        dispatch_ready(state)  # inside the lease: if this fails, the watchdog re-drives the step
    except BaseException:
        lease.release(finished=False)
        raise
    lease.release(finished=True)


# Finalize (control) ----------------------------------------------------------------------
def finalize(state: JobState, revision: int) -> dict:
    """The end of a revision: manifest, contact sheet, traces cleared, status done, callback.

    A cancelled revision after the first puts back the frames it changed and leaves the last
    finished revision's manifest as it was (``abandon_revision``)."""
    store, spec = fleet_store(), state.spec()
    state.mark_finalized()
    if revision > 0 and state.cancelled():
        return abandon_revision(state, spec, revision)
    manifest = build_manifest(spec, state.frames(), time.time(), estimate_cost(spec, state.costs(), get_settings()),
                              cancelled=state.cancelled())
    manifest.revision = revision
    if spec.config.max_usd is not None:
        manifest.budget = Budget(max_usd=spec.config.max_usd, committed_usd=round(state.committed_spend(), 6),
                                 degradations=state.degradations())
        manifest.warnings += manifest.budget.degradations
    manifest.contact_sheet = write_contact_sheet(store, spec, manifest)
    store.put(manifest_key(state.job_id), manifest.model_dump_json(indent=2).encode(), "application/json")
    if not spec.config.keep_traces:
        store.delete_prefix(f"traces/{state.job_id}")
    for frame in manifest.frames:
        log.info("%s/%s quality: %s", state.job_id, frame.name,
                 frame.selected.overall if frame.selected else "no image")
    done = sum(f.status != "pending" for f in manifest.frames)
    if spec.callback is not None:  # before "done": a finalize that dies here is re-driven, notify dedups
        send(state, NOTIFY_MAIN_APP, (state.job_id, revision, manifest.status, manifest.failed_clips))
    state.commit_revision()
    state.forget_task_ids()  # the revision's tasks are done: a cancel of the next revokes only its own
    state.update_status(state="done", stage="done", outcome=manifest.status, percent=100.0, frames_done=done,
                        manifest_key=manifest_key(state.job_id), message=f"Finished: {manifest.status}", active=False)
    return {"job_id": state.job_id, "status": manifest.status, "manifest": manifest_key(state.job_id),
            "revision": revision}


def abandon_revision(state: JobState, spec, revision: int) -> dict:
    """A cancelled revision (not the first): its frames go back to the last finished revision, whose
    manifest and contact sheet stay as they were; the callback says the revision was cancelled."""
    restored, _ = state.restore_committed()
    state.commit_revision()
    log.info("%s revision %s cancelled; put back %s", state.job_id, revision, restored)
    if spec.callback is not None:
        send(state, NOTIFY_MAIN_APP, (state.job_id, revision, "cancelled", []))
    state.forget_task_ids()
    state.update_status(state="done", stage="done", outcome="cancelled", percent=100.0,
                        manifest_key=manifest_key(state.job_id), active=False,
                        message=f"Revision {revision} cancelled; the job keeps its last finished revision")
    return {"job_id": state.job_id, "status": "cancelled", "manifest": manifest_key(state.job_id),
            "revision": revision}


@app.task(name=FINALIZE_JOB)
def finalize_job(job_id: str, revision: int | None = None) -> dict:
    state = JobState(job_id)
    current = state.revision()
    if revision is not None and revision != current:  # a stray copy from an earlier revision
        return {"job_id": job_id, "revision": revision, "stale": True}
    revision = current

    def finalized():
        status = state.status()
        if status.state != "done" or status.revision != revision:
            return None
        return {"job_id": job_id, "status": status.outcome, "manifest": status.manifest_key, "revision": revision}

    result, lease = claim_step(state, f"finalize:{revision}", finalized)
    if lease is None:
        return result
    try:
        result = finalize(state, revision)
    except BaseException:
        lease.release(finished=False)
        raise
    lease.release(finished=True)
    return result


@app.task(bind=True, name=NOTIFY_MAIN_APP, max_retries=30)
def notify_main_app(self, job_id: str, revision: int, outcome: str, failed_clips: list[int]) -> dict:
    """Send the main app's completion callback by name, once per revision (its outcome as
    finalize saw it); a failure to send is logged and retried with backoff, never fatal."""
    state = JobState(job_id)
    spec = state.spec()
    marker = f"framefleet:job:{job_id}:callback-sent:{revision}"
    sent = lambda: {"job_id": job_id, "revision": revision, "sent": True} if state.r.exists(marker) else None  # noqa: E731
    result, lease = claim_step(state, f"notify:{revision}", sent)
    if lease is None:
        return result  # sent already (a redelivered or concurrent copy)
    try:
        payload = CompletionCallback(job_id=job_id, kind=spec.kind, status=outcome, revision=revision,
                                     manifest_key=manifest_key(job_id), failed_clips=failed_clips)
        app.send_task(spec.callback.task, args=[payload.model_dump(mode="json")], queue=spec.callback.queue)
        state.r.set(marker, "1", ex=get_settings().job_ttl_s)
    except Exception as error:  # the broker hiccuped: try again later, the job is done either way
        lease.release(finished=True)
        log.warning("completion callback %s for %s failed (%s); retrying", spec.callback.task, job_id, error)
        raise self.retry(exc=error, countdown=min(2 ** self.request.retries, 60)) from error
    lease.release(finished=True)
    log.info("completion callback %s sent for %s revision %s", spec.callback.task, job_id, revision)
    return {"job_id": job_id, "revision": revision, "sent": True}


# Iteration (control) -----------------------------------------------------------------------
@app.task(name=CHOOSE_CANDIDATE)
def choose_candidate(job_id: str, frame: str, variation_index: int) -> dict:
    if not isinstance(variation_index, int) or isinstance(variation_index, bool):
        raise RequestError(f"variation_index: expected a whole number, got {variation_index!r}")
    return iterate.choose(JobState(job_id), frame, variation_index)


@app.task(name=REGENERATE_FRAME)
def regenerate_frame(job_id: str, frame: str, options: dict | None = None) -> dict:
    return iterate.regenerate(JobState(job_id), frame, iterate.parse_options(options))


@app.task(name=LIST_JOBS)
def list_jobs(active_only: bool = False, limit: int = 50) -> list[dict]:
    """Recent jobs, newest first (only those not done with ``active_only``), at most ``limit``."""
    if not isinstance(active_only, bool):
        raise RequestError(f"active_only: expected true or false, got {active_only!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise RequestError(f"limit: expected a whole number from 1 to {MAX_LIST_LIMIT}, got {limit!r}")
    return [row.model_dump(mode="json") for row in job_summaries(active_only, limit)]


def job_summaries(active_only: bool, limit: int) -> list[JobSummary]:
    """One pipeline of status reads for the jobs listed: the newest ``limit`` of the recent jobs,
    or of the active ones (so running jobs older than the newest ``limit`` are listed too)."""
    job_ids = active_job_ids(limit) if active_only else recent_jobs(limit)
    parked = parked_jobs()
    rows = []
    for job_id, raw in zip(job_ids, JobState.statuses(job_ids)):
        if raw is None:  # expired
            continue
        try:
            status = JobStatus.model_validate(raw)
        except ValidationError:  # its status cannot be read: the watchdog parks such a job
            rows.append(JobSummary(job_id=job_id, state="done", stage="parked", outcome="failed",
                                   parked=parked.get(job_id, "status unreadable")))
            continue
        if active_only and status.state == "done":
            continue
        rows.append(JobSummary(job_id=job_id, kind=status.kind, state=status.state, stage=status.stage,
                               revision=status.revision, outcome=status.outcome, percent=status.percent,
                               updated_at=status.updated_at, parked=parked.get(job_id)))
    return rows


# Operations: resume, cancel, watchdog (control) --------------------------------------------
@app.task(name=RESUME_JOB)
def resume_job(job_id: str) -> dict:
    return ResumeResult(job_id=job_id, resumed_at=resume(JobState(job_id))).model_dump(mode="json")


@app.task(name=CANCEL_JOB)
def cancel_job(job_id: str) -> dict:
    """Flag, revoke what is queued, cancel paid predictions in flight, finalize as cancelled."""
    state = JobState(job_id)
    status = state.status()  # JobNotFound for an unknown job
    if status.state == "done":
        return CancelResult(job_id=job_id, cancelled=False, revision=status.revision,
                            reason="the job had already finished").model_dump(mode="json")
    revision = status.revision
    state.cancel(revision)
    app.control.revoke(sorted(state.task_ids()))  # the running revision's tasks only
    predictions = [prediction for ledger_key, prediction in state.predictions().items()
                   if revision_of(ledger_key) == revision]
    if predictions and state.spec().providers.get("images") == "replicate":
        generator = image_generator()
        for prediction_id in predictions:
            generator.cancel(prediction_id)
    state.update_status(message="Cancelling")
    # Always a fresh finalize: one the last selection queued was revoked above (a copy already
    # running finishes, and this one then returns its result).
    send(state, FINALIZE_JOB, (job_id, revision))
    return CancelResult(job_id=job_id, cancelled=True, revision=revision,
                        predictions_cancelled=len(predictions)).model_dump(mode="json")


@app.task(name=WATCHDOG)
def watchdog() -> dict:
    """Re-drive steps whose worker died (their lease expired); see tasks/coordination/recovery.py."""
    return watchdog_round()
