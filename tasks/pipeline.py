"""The Celery tasks and the canvas that wires them into a job.

  create ─ chord(enhance(frame) for every frame [llm]) → start_frames [control]
  frame k: chord(generate_variation × n [images]) → score_variations [gpu] → select [control]
  select stores frame k's selection, then enqueues frame k+1's chord, or finalize [control].

Tasks are thin: parse the small JSON payload, call a plain function, write artifacts, return
small JSON (artifact keys and numbers). No task waits on another task's result.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time

from celery import chord
from PIL import Image

from config.settings import get_settings
from scoring import MetricScores, Ranked, overall_score, rank_images_by_quality
from tasks.contact_sheet import render_contact_html, render_contact_sheet
from tasks.enhancement import GENERATION_TRACE, enhance_prompt_iterative
from tasks.plan import build_frame_plan, resolve_inputs
from tasks.records import (Cost, Enhancement, FrameRecord, JobTimings, Manifest, Scores, Selection,
                           VariationRecord)
from tasks.requests import REFERENCE_FIELDS, JobConfig, RequestError, parse_request
from tasks.state import JobExists, JobSpec, JobState, active_jobs
from workers.app import app
from workers.bootstrap import process_scorer
from workers.providers import image_generator, image_provider_name, llm_provider_name, prompt_agents
from workers.providers.base import ImageRequest
from workers.inputs import fetch_url, is_url, normalise_image
from workers.store import fleet_store

log = logging.getLogger(__name__)

ENHANCED, ORIGINAL = "enhanced", "original"  # which prompt a generation stage uses
GENERATION_RETRY_DELAY_S = 1.0
RETRY_WITH_ORIGINAL_PROMPT = "generation failed: one image with the original prompt"


def prompt_for(record: FrameRecord, stage: str) -> str:
    """The prompt a stage generates from, and so the prompt its images are scored against."""
    return record.original_prompt if stage == ORIGINAL else (record.enhanced_prompt or record.original_prompt)


# Artifact keys: deterministic in (job, frame, stage, variation), so redelivery overwrites.
def variation_key(job_id: str, frame: str, stage: str, index: int) -> str:
    name = f"v{index}.png" if stage == ENHANCED else f"original_v{index}.png"
    return f"jobs/{job_id}/variations/{frame}/{name}"


def variation_seed(job_id: str, frame: str, stage: str, index: int, attempt: int) -> int:
    """Different per variation (so 4 candidates are not copies), the same on redelivery."""
    digest = hashlib.sha256(f"{job_id}/{frame}/{stage}/{index}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def frame_key(job_id: str, frame: str) -> str:
    return f"jobs/{job_id}/frames/{frame}.png"


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/manifest.json"


def trace_key(job_id: str, frame: str, name: str) -> str:
    return f"traces/{job_id}/{frame}/{name}"


def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


class JobCancelled(Exception):
    pass


def _raise_if_cancelled(state: JobState) -> None:
    if state.cancelled():
        raise JobCancelled(state.job_id)


def reference_key(job_id: str) -> str:
    return f"jobs/{job_id}/inputs/reference.png"


def load_reference(source: str, field: str, settings) -> bytes:
    """The reference image as validated PNG bytes, from a store key or an http(s) URL."""
    if is_url(source):
        return normalise_image(fetch_url(source, field, settings), field, settings)
    try:
        return normalise_image(fleet_store().get(source), field, settings)
    except KeyError:
        raise RequestError(f"{field}: no artifact {source!r} in the store") from None


def _send(state: JobState, header: list, body) -> None:
    """Enqueue chord(header, body), remembering its task ids so a cancel can revoke them."""
    ids = [signature.freeze().id for signature in header]
    result = body.freeze()
    while result is not None:  # a chain body: its last task's result links back to the first
        ids.append(result.id)
        result = result.parent
    state.add_task_ids(ids)
    chord(header, body).apply_async()


def submit_job(kind: str, payload) -> dict:
    """Validate everything, then store the spec and enqueue the enhancement chord.

    Bad input raises RequestError naming the field before anything is written or enqueued.
    """
    settings = get_settings()
    request = parse_request(kind, payload, settings)
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
        submitted=time.time(),
    )
    state.create(spec)
    if reference_png is not None:
        fleet_store().put(reference_key(request.job_id), reference_png, "image/png")
    state.set_active(True)
    _send(state, [enhance_prompt.si(request.job_id, f.name) for f in plan.frames], start_frames.si(request.job_id))
    return {"job_id": request.job_id, "frames": len(plan.frames)}


@app.task(name="framefleet.storyboard.create")
def create_storyboard(request) -> dict:
    return submit_job("storyboard", request)


@app.task(name="framefleet.references.create")
def create_references(request) -> dict:
    return submit_job("references", request)


@app.task(name="framefleet.jobs.status")
def job_status(job_id: str) -> dict:
    return JobState(job_id).status().model_dump(mode="json")


# Enhancement -----------------------------------------------------------------------------
@app.task(name="framefleet.prompts.enhance")
def enhance_prompt(job_id: str, frame: str) -> dict:
    state = JobState(job_id)
    record = state.frame(frame)
    if record.enhanced_prompt is not None:  # redelivered: the paid work is done
        return {"frame": frame, "fallback": record.enhancement.fallback}
    spec, settings, store = state.spec(), get_settings(), fleet_store()
    started = time.time()
    agents = None
    try:
        if not spec.config.enhance:  # the job asked for the original prompt (e.g. an evaluation baseline)
            record.enhanced_prompt = record.original_prompt
            record.enhancement = Enhancement(skipped=True)
            state.save_frame(record)
            state.prompt_enhanced(spec.kind, len(spec.plan.frames))
            return {"frame": frame, "fallback": False}
        if "enhancement" in settings.inject_faults:
            raise RuntimeError("injected fault: enhancement")
        agents = prompt_agents(settings)
        result = enhance_prompt_iterative(
            record.original_prompt, agents,
            max_iterations=spec.config.max_enhancement_iterations, score_threshold=spec.config.score_threshold,
            convergence_epsilon=spec.config.convergence_epsilon,
            trace=lambda name, text: store.put(trace_key(job_id, frame, name), text.encode(), "text/plain"),
            check_cancelled=lambda: _raise_if_cancelled(state),
        )
        record.enhanced_prompt = result.final_prompt
        record.enhancement = Enhancement(iterations=len(result.rounds), final_score=result.final_score)
    except JobCancelled:
        return {"frame": frame, "cancelled": True}
    except Exception as error:  # any failure of the LLM stage takes the seeds' fallback
        log.warning("enhancement failed for %s/%s: %s; using the original prompt", job_id, frame, error)
        record.enhanced_prompt = record.original_prompt
        record.enhancement = Enhancement(fallback=True, error=str(error))
        record.fallbacks.append("enhancement failed: original prompt, single image")
    record.timings.enhance = (started, time.time())
    if getattr(agents, "usage", None):
        state.add_costs(frame, **agents.usage)
    state.save_frame(record)
    state.prompt_enhanced(spec.kind, len(spec.plan.frames))
    return {"frame": frame, "fallback": record.enhancement.fallback}


@app.task(name="framefleet.jobs.start_frames")
def start_frames(job_id: str, resumed: bool = False) -> None:
    state = JobState(job_id)
    if not state.cancelled() and (resumed or state.claim("start_frames")):
        continue_frames(state)


def continue_frames(state: JobState) -> str:
    """Enqueue the first frame without a stored selection (or finalize). Safe to repeat."""
    spec, frames = state.spec(), state.frames()
    for planned in spec.plan.frames:
        record = frames[planned.name]
        if record.status == "pending":
            original = RETRY_WITH_ORIGINAL_PROMPT in record.fallbacks
            enqueue_frame(state, planned.name, ORIGINAL if original else ENHANCED)
            return planned.name
    finalize_job.delay(state.job_id)
    return "finalize"


def resume(state: JobState) -> str:
    """Continue a job from its stored state: missing enhancements first, then the first open frame."""
    status = state.status()
    if status.state == "done" or state.cancelled():
        return "nothing to do"
    spec, frames = state.spec(), state.frames()
    state.set_active(True)
    state.update_status(message=f"Resumed at {status.stage}")
    missing = [f.name for f in spec.plan.frames if frames[f.name].enhanced_prompt is None]
    if missing:
        _send(state, [enhance_prompt.si(state.job_id, name) for name in missing],
              start_frames.si(state.job_id, True))
        return "enhance"
    return continue_frames(state)


def enqueue_frame(state: JobState, frame: str, stage: str) -> None:
    """Resolve the frame's input images from stored selections and enqueue its chord."""
    spec = state.spec()
    record = state.frame(frame)
    record.inputs = resolve_inputs(spec.plan, spec.plan.frame(frame), state.selections())
    record.timings.enqueued = time.time()
    state.save_frame(record)
    if record.enhancement.fallback:  # the seeds' rule: original prompt, a single image
        stage = ORIGINAL
    count = 1 if stage == ORIGINAL else spec.config.num_variations
    state.frame_stage(spec.kind, "generate", frame, *_progress(state))
    header = [generate_variation.si(state.job_id, frame, stage, index) for index in range(1, count + 1)]
    body = score_variations.s(state.job_id, frame) | select_variation.s(state.job_id, frame, stage)
    _send(state, header, body)


# Generation (chord header: never raises for a provider failure) --------------------------
@app.task(bind=True, name="framefleet.images.generate_variation", max_retries=1)
def generate_variation(self, job_id: str, frame: str, stage: str, index: int) -> dict:
    state, store = JobState(job_id), fleet_store()
    stored = state.variation(frame, stage, index)
    if stored is not None and stored.key and store.exists(stored.key):
        return stored.model_dump(mode="json")  # redelivered: never pay for an image twice
    if state.cancelled():  # checked before any paid call
        return VariationRecord(index=index, prompt_source=stage, error="cancelled").model_dump(mode="json")
    spec, record = state.spec(), state.frame(frame)
    prompt = prompt_for(record, stage)
    key = variation_key(job_id, frame, stage, index)
    started = time.time()
    attempt = self.request.retries
    try:
        png = image_generator().generate(ImageRequest(
            prompt=prompt, aspect_ratio=spec.aspect_ratio, variation=index, attempt=attempt,
            seed=variation_seed(job_id, frame, stage, index, attempt), model=spec.config.image_model,
            job_id=job_id, frame=frame, ledger_key=f"{key}#{attempt}",
            input_images=[store.get(k) for k in record.inputs],
        ))
        store.put(key, png, "image/png")
        state.add_costs(frame, images_stored=1)
    except Exception as error:  # provider or store failure: retry once, then a failure record
        if self.request.retries < self.max_retries:
            log.warning("variation %s of %s/%s failed (%s); retrying once", index, job_id, frame, error)
            raise self.retry(exc=error, countdown=GENERATION_RETRY_DELAY_S) from error
        log.warning("variation %s of %s/%s failed after a retry: %s", index, job_id, frame, error)
        return VariationRecord(index=index, prompt_source=stage, error=str(error),
                               timing=(started, time.time())).model_dump(mode="json")
    queue_wait = round(started - record.timings.enqueued, 3) if record.timings.enqueued else None
    result = VariationRecord(index=index, key=key, prompt_source=stage, timing=(started, time.time()),
                             queue_wait=queue_wait)
    state.save_variation(frame, stage, result)
    return result.model_dump(mode="json")


# Scoring (gpu) ---------------------------------------------------------------------------
def score_frame(prompt: str, variations: list[VariationRecord], input_keys: list[str],
                weights: dict) -> tuple[str, list[str]]:
    """Score every generated variation of a frame in one batch; fills ``scores`` in place.

    Returns the scorer's name and a note per metric that failed (its weight went to the others).
    """
    store = fleet_store()
    generated = [v for v in variations if v.key]
    if "scoring" in get_settings().inject_faults:
        raise RuntimeError("injected fault: scoring")
    scorer = process_scorer()
    metrics: list[MetricScores] = scorer.score(prompt, [_decode(store.get(v.key)) for v in generated],
                                               [_decode(store.get(k)) for k in input_keys])
    notes: dict[str, str] = {}
    for variation, m in zip(generated, metrics, strict=True):
        variation.scores = Scores(pickscore=m.pickscore, clip_score=m.clip_score, aesthetic=m.aesthetic,
                                  overall=overall_score(m, weights), consistency=m.consistency)
        notes.update(m.errors)
    return scorer.name, [f"{metric} failed ({why}); overall re-weighted over the other metrics"
                         for metric, why in sorted(notes.items())]


@app.task(name="framefleet.scoring.score_variations")
def score_variations(results: list[dict], job_id: str, frame: str) -> dict:
    state = JobState(job_id)
    spec, record = state.spec(), state.frame(frame)
    variations = [VariationRecord.model_validate(r) for r in results]
    started = time.time()
    scorer, error, notes = None, None, []
    if any(v.key for v in variations) and not state.cancelled():
        try:
            scorer, notes = score_frame(prompt_for(record, variations[0].prompt_source), variations, record.inputs,
                                        spec.config.score_weights.model_dump())
        except Exception as exc:  # the seeds' fallback: first generated image, unranked
            log.warning("scoring failed for %s/%s: %s", job_id, frame, exc)
            error = str(exc)
    return {"variations": [v.model_dump(mode="json") for v in variations], "scorer": scorer, "error": error,
            "notes": notes, "timing": [started, time.time()]}


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


@app.task(name="framefleet.frames.select")
def select_variation(scored: dict, job_id: str, frame: str, stage: str) -> None:
    state, store = JobState(job_id), fleet_store()
    if state.cancelled():  # the cancel finalizes the job; keep only what was finished before
        return
    spec, record = state.spec(), state.frame(frame)
    if record.status != "pending":  # redelivered after the selection was stored
        advance(state, frame)
        return
    variations = [VariationRecord.model_validate(v) for v in scored["variations"]]
    record.variations = [v for v in record.variations if v.prompt_source != stage] + variations
    record.timings.variations += [v.timing for v in variations if v.timing]
    record.timings.score = tuple(scored["timing"])
    record.scorer = scored["scorer"] or record.scorer
    record.warnings += scored.get("notes", [])
    state.frame_stage(spec.kind, "score", frame, *_progress(state))
    if not any(v.key for v in variations):
        if stage == ENHANCED:
            record.fallbacks.append(RETRY_WITH_ORIGINAL_PROMPT)
            state.save_frame(record)
            if state.claim(f"original:{frame}"):
                enqueue_frame(state, frame, ORIGINAL)
            return
        record.status = "failed"
        record.fallbacks.append("generation failed: frame failed")
        log.error("frame %s/%s failed: no image could be generated", job_id, frame)
    else:
        chosen = select_best_variation(variations, scored["error"], record.fallbacks)
        store.put(frame_key(job_id, frame), store.get(chosen.key), "image/png")
        overall = chosen.scores.overall if chosen.scores else None
        record.selected = Selection(index=chosen.index, key=chosen.key, frame_key=frame_key(job_id, frame),
                                    overall=overall)
        record.status = "succeeded"
        if overall is not None and overall < spec.config.quality_threshold:
            warning = f"quality {overall:.1f} is below the threshold {spec.config.quality_threshold:.1f}"
            record.warnings.append(warning)
            log.warning("%s/%s: %s; keeping the image", job_id, frame, warning)
        log.info("%s/%s selected v%s (overall %s)", job_id, frame, chosen.index, overall)
    store.put(trace_key(job_id, frame, GENERATION_TRACE), record.model_dump_json(indent=2).encode(),
              "application/json")
    state.save_frame(record)
    advance(state, frame)


def _progress(state: JobState) -> tuple[int, int]:
    frames = state.frames()
    return sum(f.status != "pending" for f in frames.values()), len(frames)


def advance(state: JobState, frame: str) -> None:
    """Enqueue the next frame that can run (or finalize), once, after ``frame`` is settled."""
    if not state.claim(f"advance:{frame}"):
        return
    spec = state.spec()
    frames = state.frames()
    failed_clips = {f.clip for f in frames.values() if f.status == "failed" and f.clip is not None}
    for planned in spec.plan.frames[spec.plan.index_of(frame) + 1:]:
        record = frames[planned.name]
        if record.status != "pending":
            continue
        if spec.kind == "storyboard" and planned.clip in failed_clips:
            # The clip's start frame failed: its end frame has nothing to end, go to the next clip.
            record.status = "skipped"
            record.fallbacks.append("skipped: an earlier frame of this clip failed")
            state.save_frame(record)
            continue
        enqueue_frame(state, planned.name, ENHANCED)
        return
    if state.claim("finalize"):
        finalize_job.delay(state.job_id)


# Finalize (control) ----------------------------------------------------------------------
def estimate_cost(spec: JobSpec, counters: dict[str, dict[str, int]], settings) -> Cost:
    total = counters.get("total", {})
    usd = 0.0
    if spec.providers.get("llm") == "openai":
        usd += total.get("prompt_tokens", 0) * settings.openai_usd_per_1m_prompt_tokens / 1e6
        usd += total.get("completion_tokens", 0) * settings.openai_usd_per_1m_completion_tokens / 1e6
    if spec.providers.get("images") == "replicate":
        price = settings.replicate_usd_per_prediction.get(spec.config.image_model, 0.0)
        usd += total.get("predictions_created", 0) * price
    return Cost(frames={k: v for k, v in counters.items() if k != "total"}, total=total,
                estimated_usd=round(usd, 6))


def build_manifest(spec: JobSpec, frames: dict[str, FrameRecord], finished: float,
                   cost: Cost | None = None, cancelled: bool = False) -> Manifest:
    ordered = [frames[f.name] for f in spec.plan.frames]
    succeeded = [f for f in ordered if f.status == "succeeded"]
    status = "succeeded" if len(succeeded) == len(ordered) else ("partial" if succeeded else "failed")
    if cancelled:
        status = "cancelled"
    return Manifest(
        job_id=spec.job_id, kind=spec.kind, status=status,
        scorer=", ".join(sorted({f.scorer for f in ordered if f.scorer})) or "none",
        providers=spec.providers, config=spec.config.model_dump(mode="json"),
        failed_clips=sorted({f.clip for f in ordered if f.status in ("failed", "skipped") and f.clip is not None}),
        warnings=[f"{f.name}: {w}" for f in ordered for w in f.warnings + f.fallbacks],
        timings=JobTimings(submitted=spec.submitted, finished=finished),
        frames=ordered,
        cost=cost or Cost(),
    )


def write_contact_sheet(store, spec: JobSpec, manifest: Manifest) -> dict[str, str]:
    """The job's contact sheet (PNG and HTML) next to its frames; a failure here is only logged."""
    prefix = f"jobs/{spec.job_id}/"
    keys = {"png": prefix + "contact_sheet.png", "html": prefix + "contact_sheet.html"}
    try:
        png = render_contact_sheet(manifest, spec.aspect_ratio, lambda key: _decode(store.get(key)))
        store.put(keys["png"], png, "image/png")
        page = render_contact_html(manifest, lambda key: key.removeprefix(prefix))
        store.put(keys["html"], page.encode(), "text/html")
    except Exception:  # the frames and manifest matter more than the picture of them
        log.exception("contact sheet for %s failed", spec.job_id)
        return {}
    return keys


@app.task(name="framefleet.jobs.finalize")
def finalize_job(job_id: str) -> dict:
    state, store = JobState(job_id), fleet_store()
    spec = state.spec()
    manifest = build_manifest(spec, state.frames(), time.time(), estimate_cost(spec, state.costs(), get_settings()),
                              cancelled=state.cancelled())
    manifest.contact_sheet = write_contact_sheet(store, spec, manifest)
    store.put(manifest_key(job_id), manifest.model_dump_json(indent=2).encode(), "application/json")
    if not spec.config.keep_traces:
        store.delete_prefix(f"traces/{job_id}")
    for frame in manifest.frames:
        log.info("%s/%s quality: %s", job_id, frame.name, frame.selected.overall if frame.selected else "no image")
    done = sum(f.status != "pending" for f in manifest.frames)
    state.update_status(state="done", stage="done", outcome=manifest.status, percent=100.0, frames_done=done,
                        manifest_key=manifest_key(job_id), message=f"Finished: {manifest.status}")
    state.set_active(False)
    return {"job_id": job_id, "status": manifest.status, "manifest": manifest_key(job_id)}



# Operations: resume, cancel, watchdog (control) --------------------------------------------
@app.task(name="framefleet.jobs.resume")
def resume_job(job_id: str) -> dict:
    return {"job_id": job_id, "resumed_at": resume(JobState(job_id))}


@app.task(name="framefleet.jobs.cancel")
def cancel_job(job_id: str) -> dict:
    """Flag, revoke what is queued, cancel paid predictions in flight, finalize as cancelled."""
    state = JobState(job_id)
    if state.status().state == "done":  # KeyError naming job_id for an unknown job
        return {"job_id": job_id, "cancelled": False, "reason": "the job had already finished"}
    state.cancel()
    app.control.revoke(sorted(state.task_ids()))
    predictions = state.predictions()
    if predictions and state.spec().providers.get("images") == "replicate":
        generator = image_generator()
        for prediction_id in predictions.values():
            generator.cancel(prediction_id)
    state.update_status(message="Cancelling")
    if state.claim("finalize"):
        finalize_job.delay(job_id)
    return {"job_id": job_id, "cancelled": True, "predictions_cancelled": len(predictions)}


@app.task(name="framefleet.jobs.watchdog")
def watchdog() -> list[str]:
    """Re-drive jobs whose status has not moved for ``stall_after_s`` (e.g. a worker died with
    their tasks unacknowledged); the tasks are idempotent, so a re-drive redoes no paid work."""
    settings, now, redriven = get_settings(), time.time(), []
    for job_id in active_jobs():
        state = JobState(job_id)
        try:
            status = state.status()
        except KeyError:
            state.set_active(False)
            continue
        if status.state == "done":
            state.set_active(False)
        elif status.stalled_for(now) > settings.stall_after_s:
            log.warning("job %s stalled for %.0fs at %s; re-driving", job_id, status.stalled_for(now), status.stage)
            resume(state)
            redriven.append(job_id)
    return redriven
