"""The fleet's Celery tasks: each parses its small JSON arguments, runs one step, returns small JSON.

A job, in the order its steps run (the steps are tasks/steps/, one module each):

  create [intake]                       steps/create.py     validate, store the job, send every enhancement
  enhance(frame) [llm], all at once     steps/enhance.py    the two-agent loop; then the frame is ready
  frame k, once its enhancement is stored and frame k-1 is settled (coordination/dispatch.py):
    chord(generate × n [images])        steps/generate.py   one paid image each
      → score [gpu]                     steps/score.py      the round's candidates in one batch
      → judge [llm] (judge: vlm only)   steps/judge.py      a vision model settles a close call
      → select [control]                steps/select.py     rank 1 kept, chained into frame k+1
  finalize [intake]                     steps/finalize.py   manifest, contact sheet, done, callback
  choose / regenerate [control]         steps/iterate.py    a revision of a finished job

Every step runs in ``run_step`` (coordination/leases.py): one copy at a time, a second copy waits
for the first copy's stored outcome, and a step whose worker died is re-driven by the watchdog.
No task waits on another task's result, and the fleet's own steps store none (``ignore_result``:
the next step gets its input as an argument; a chord counts its headers' results without their
being stored). Only the tasks a main app calls and reads store results.
"""

from __future__ import annotations

import logging

from celery import Task
from framefleet.config.celery import (
    CANCEL_JOB,
    CHOOSE_CANDIDATE,
    CREATE_REFERENCES,
    CREATE_STORYBOARD,
    CREATE_TASKS,
    ENHANCE_PROMPT,
    FINALIZE_JOB,
    GENERATE_VARIATION,
    JOB_STATUS,
    JUDGE_CANDIDATES,
    LIST_JOBS,
    NOTIFY_MAIN_APP,
    REGENERATE_FRAME,
    RESUME_JOB,
    SCORE_VARIATIONS,
    SELECT_VARIATION,
    TASK_QUEUES,
    WATCHDOG,
)
from framefleet.tasks.app import app
from framefleet.tasks.coordination import cancel, recovery
from framefleet.tasks.coordination.broker import admit_siblings
from framefleet.tasks.coordination.dispatch import dispatch_ready, planned_round_size
from framefleet.tasks.coordination.leases import JobClosed, run_step
from framefleet.tasks.coordination.score_batch import round_of, score_step
from framefleet.tasks.coordination.slot_hold import HoldsSlot, holds_slots, slot_hold_due
from framefleet.tasks.job.errors import RequestError
from framefleet.tasks.job.frames import StaleWrite
from framefleet.tasks.job.jobs import job_summaries
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import MAX_LIST_LIMIT, ResumeResult, VariationRecord
from framefleet.tasks.job.states import PromptSource
from framefleet.tasks.steps import create, enhance, finalize, generate, iterate, judge, score, select

log = logging.getLogger(__name__)

GENERATION_RETRY_DELAY_S = 1.0


# Create and read (intake, control) --------------------------------------------------------------
@app.task(name=CREATE_STORYBOARD)
def create_storyboard(*args, **kwargs) -> dict:
    return create.create_job("storyboard", the_request("storyboard", args, kwargs)).model_dump(mode="json")


@app.task(name=CREATE_REFERENCES)
def create_references(*args, **kwargs) -> dict:
    return create.create_job("references", the_request("references", args, kwargs)).model_dump(mode="json")


def the_request(kind: str, args: tuple, kwargs: dict):
    """The create tasks take exactly one argument, the request (positional or ``request=``)."""
    given = list(args) + ([kwargs.pop("request")] if "request" in kwargs else [])
    if kwargs:
        raise RequestError(f"request: unexpected keyword arguments {sorted(kwargs)}")
    if len(given) != 1:
        raise RequestError(f"request: {CREATE_TASKS[kind]} takes exactly one argument, the request "
                           f"(a JSON object or JSON text); got {len(given)}")
    return given[0]


@app.task(name=JOB_STATUS)
def job_status(job_id: str) -> dict:
    return Job(job_id).progress.read().model_dump(mode="json")


@app.task(name=LIST_JOBS)
def list_jobs(active_only: bool = False, limit: int = 50) -> list[dict]:
    """Recent jobs, newest first (only those not done with ``active_only``), at most ``limit``."""
    if not isinstance(active_only, bool):
        raise RequestError(f"active_only: expected true or false, got {active_only!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise RequestError(f"limit: expected a whole number from 1 to {MAX_LIST_LIMIT}, got {limit!r}")
    return [row.model_dump(mode="json") for row in job_summaries(active_only, limit)]


# A frame's steps (llm, images, gpu, control) -----------------------------------------------------
@app.task(name=ENHANCE_PROMPT, ignore_result=True)
def enhance_prompt(job_id: str, frame: str) -> dict:
    job = Job(job_id)
    enhancement = run_step(job, f"enhance:{frame}", stored=enhance.stored_enhancement(job, frame),
                           work=lambda: enhance.enhance_frame(job, frame), after=lambda: dispatch_ready(job),
                           prefetch=job.prefetch_spec_and_frame(frame))
    if enhancement is None:
        return {"frame": frame, "cancelled": True}
    return {"frame": frame, "fallback": enhancement.fallback}


# The chord counts its headers' results without their being stored (the Redis backend's
# on_chord_part_return), and nothing reads a variation's task state.
@app.task(bind=True, base=HoldsSlot, name=GENERATE_VARIATION, max_retries=1, ignore_result=True)
def generate_variation(self: Task, job_id: str, frame: str, stage: str, index: int, revision: int = 0,
                       round_size: int | None = None) -> dict:
    """A chord header: never raises for a provider failure (a failure record stands in)."""
    source = PromptSource(stage)
    admit_siblings(TASK_QUEUES[self.name], self.request, job_id, frame)
    job = Job(job_id)
    count = round_size or planned_round_size(source, job.spec.frame_config(job.frames.get(frame)))

    def work() -> VariationRecord:
        try:
            return generate.generate_variation(job, frame, source, index, revision, count,
                                               attempt=self.request.retries,
                                               retries_left=self.max_retries - self.request.retries)
        except generate.RetryGeneration as error:  # a new attempt, as a new message
            raise self.retry(exc=error.__cause__, countdown=GENERATION_RETRY_DELAY_S) from error

    if holds_slots():  # a hold's first view is read in the round trip that stores the variation
        job.after_outcome = job.rounds.prefetch_hold_view(frame, revision, source, count)
    try:  # checked before any paid call
        record = run_step(job, f"generate:{frame}/{revision}/{source}/{index}", while_open=True,
                          stored=generate.stored_variation(job, frame, revision, source, index), work=work,
                          prefetch=job.prefetch_spec_and_frame(frame))
    except JobClosed:
        return VariationRecord(index=index, prompt_source=source, error="cancelled").model_dump(mode="json")
    try:  # the hold itself runs after the record is returned and counted (HoldsSlot.after_return)
        self.request.slot_hold = slot_hold_due(job, job.spec, frame, revision, source, count)
    except Exception as error:  # noqa: BLE001 — an optimisation: a chord header never raises for it
        log.warning("job %s: no slot hold after %s's variation %s: %s", job_id, frame, index, error)
    return record.model_dump(mode="json")


@app.task(name=SCORE_VARIATIONS, ignore_result=True)
def score_variations(results: list[dict], job_id: str, frame: str, revision: int = 0) -> dict:
    """The round's scores; rounds waiting behind it are scored in the same pass (score_batch.py)."""
    job = Job(job_id)
    variations, source = round_of(results)
    try:
        return run_step(job, score_step(frame, revision, source), while_open=True,
                        stored=score.scored(job, frame, revision, source),
                        work=lambda: score.score_with_waiting(job, frame, revision, source, variations),
                        prefetch=job.prefetch_spec_and_frame(frame))
    except JobClosed:
        return {"variations": results, "scorer": None, "error": None, "notes": [], "timing": None}


@app.task(name=JUDGE_CANDIDATES, ignore_result=True)
def judge_candidates(scored: dict, job_id: str, frame: str, stage: str, revision: int = 0) -> dict:
    """The scoring result, with the vision judge's verdict on a close call added."""
    job = Job(job_id)
    try:
        return run_step(job, f"judge:{frame}/{revision}/{stage}", while_open=True,
                        stored=judge.judged(job, frame, revision, stage),
                        work=lambda: judge.judge_round(job, frame, revision, stage, scored))
    except JobClosed:
        return scored


@app.task(name=SELECT_VARIATION, ignore_result=True)
def select_variation(scored: dict, job_id: str, frame: str, stage: str, revision: int = 0) -> None:
    job = Job(job_id)

    def work() -> bool:
        spec, views = job.spec_and_views()
        reached = job.progress.frame_reached_call(spec.kind, "score", frame, views.settled(), len(views))
        try:
            select.select_round(job, frame, stage, revision, scored, job.frames.get(frame), reported=reached)
        except StaleWrite:
            pass  # another copy stored this round's outcome first
        return True

    try:  # a cancel finalizes the job: it keeps only what was finished before
        run_step(job, f"select:{frame}/{revision}/{stage}", while_open=True,
                 stored=select.selected(job, frame, revision, stage),
                 work=work, after=lambda: dispatch_ready(job), prefetch=job.prefetch_spec_frame_and_views(frame))
    except JobClosed:
        return


# The end of a revision (control) ----------------------------------------------------------------
@app.task(name=FINALIZE_JOB, ignore_result=True)
def finalize_job(job_id: str, revision: int | None = None) -> dict:
    job = Job(job_id)
    current = job.revision()
    if revision is not None and revision != current:  # a stray copy from an earlier revision
        return {"job_id": job_id, "revision": revision, "stale": True}
    return run_step(job, f"finalize:{current}", stored=finalize.finalized(job, current),
                    work=lambda: finalize.finalize(job, current), prefetch=job.prefetch_spec())


@app.task(bind=True, name=NOTIFY_MAIN_APP, max_retries=30, ignore_result=True)
def notify_main_app(self: Task, job_id: str, revision: int, outcome: str, failed_clips: list[int]) -> dict:
    """The main app's completion callback, sent once per revision; a failure to send is logged
    and retried with backoff, never fatal to the job."""
    job = Job(job_id)

    def work() -> dict:
        try:
            return finalize.notify_main_app(job, revision, outcome, failed_clips)
        except finalize.CallbackNotSent as error:
            raise self.retry(exc=error, countdown=min(2 ** self.request.retries, 60)) from error

    return run_step(job, f"notify:{revision}", stored=finalize.callback_sent(job, revision),
                    work=work)


# Iterating on a finished job, and operations (control) -------------------------------------------
@app.task(name=CHOOSE_CANDIDATE)
def choose_candidate(job_id: str, frame: str, variation_index: int) -> dict:
    if not isinstance(variation_index, int) or isinstance(variation_index, bool):
        raise RequestError(f"variation_index: expected a whole number, got {variation_index!r}")
    return iterate.choose(Job(job_id), frame, variation_index).model_dump(mode="json")


@app.task(name=REGENERATE_FRAME)
def regenerate_frame(job_id: str, frame: str, options: dict | None = None) -> dict:
    return iterate.regenerate(Job(job_id), frame, iterate.parse_options(options)).model_dump(mode="json")


@app.task(name=RESUME_JOB)
def resume_job(job_id: str) -> dict:
    return ResumeResult(job_id=job_id, resumed_at=recovery.resume(Job(job_id))).model_dump(mode="json")


@app.task(name=CANCEL_JOB)
def cancel_job(job_id: str) -> dict:
    return cancel.cancel(Job(job_id)).model_dump(mode="json")


@app.task(name=WATCHDOG, ignore_result=True)
def watchdog() -> dict:
    """Re-drive steps whose worker died (their lease expired) and resume stalled jobs; see
    coordination/recovery.py."""
    return recovery.watchdog_round()
