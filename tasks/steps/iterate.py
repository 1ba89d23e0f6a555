"""Iterating on a finished job: choose another candidate, regenerate a frame, re-chain what follows.

Each choose or regenerate opens the job's next revision (``Job.start_revision``): it is
refused while the job is running (the reason names the running revision), so a revision never
runs concurrently with another. The changed frame and every frame that depends on it through the
chain move to the new revision: their current state goes to their ``history`` and they are
generated again under artifact keys that carry the revision, so nothing earlier is overwritten.
Enhancements are reused unless a regenerate gives a new prompt or changes how it is enhanced.
The revision ends like a job: finalize rewrites the manifest (with ``revision`` and each frame's
``history``) and the completion callback is sent once.

A revision is won before it writes anything (a refused request writes nothing), and it builds the
frames it changes beside the last finished revision (job/frames.py, the draft): a cancel or a
failure of the revision drops them, and the frames and manifest of the last finished revision stay
as they were. A revision the spending cap cannot afford (not one image per frame it would
generate) is refused up front.
"""

from __future__ import annotations

from framefleet.config.celery import ENHANCE_PROMPT
from framefleet.config.settings import get_settings
from framefleet.tasks.artifacts.keys import frame_key
from framefleet.tasks.artifacts.store import fleet_store
from framefleet.tasks.coordination.budget import image_price
from framefleet.tasks.coordination.dispatch import dispatch_ready, send
from framefleet.tasks.job.errors import BudgetRefused, RequestError
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.plan import FramePlan
from framefleet.tasks.job.records import Enhancement, FrameRecord, RevisionResult, Selection
from framefleet.tasks.job.requests import RegenerateOptions, describe_validation_error
from framefleet.tasks.job.spec import JobSpec
from framefleet.tasks.job.states import SETTLED, FrameState
from framefleet.tasks.providers.adapters import image_model_registry
from pydantic import ValidationError

# Regenerate overrides that change how the frame's prompt is enhanced: the frame is enhanced again.
ENHANCEMENT_OVERRIDES = {"enhance", "max_enhancement_iterations", "score_threshold"}


def dependents(plan: FramePlan, frame: str) -> list[str]:
    """Frames whose input images contain ``frame``, directly or through the chain, in plan order."""
    changed, out = {frame}, []
    for planned in plan.frames[plan.index_of(frame) + 1:]:
        if planned.chain_from in changed:
            changed.add(planned.name)
            out.append(planned.name)
    return out


def choose(job: Job, frame: str, variation_index: int) -> RevisionResult:
    """Make candidate ``variation_index`` the frame's selection and regenerate its dependents."""
    spec = _check_frame(job, frame)
    record = job.frames.get(frame)
    candidate = next((v for v in record.variations if v.index == variation_index and v.key), None)
    if candidate is None:
        have = sorted(v.index for v in record.variations if v.key)
        raise RequestError(f"variation_index: {frame} has no generated candidate {variation_index} (have {have})")
    later = dependents(spec.plan, frame)
    _refuse_unaffordable(job, spec, later, _models(job, spec, later))
    revision = job.start_revision()  # the one refused by a concurrent choose or regenerate writes nothing
    try:
        new_key = frame_key(job.id, frame, revision)  # this revision's own key: nobody else writes it
        fleet_store().copy(candidate.key, new_key, "image/png")

        def select_candidate(current: FrameRecord) -> None:
            current.history.append(current.snapshot(f"revision {revision}: chose v{variation_index}"))
            current.revision = revision
            for v in current.variations:
                v.rank = None
            overall = candidate.scores.overall if candidate.scores else None
            current.selected = Selection(index=variation_index, key=candidate.key, frame_key=new_key, overall=overall)
            current.judge = None  # a person chose: the judge's verdict stays in the history
            current.clear_notes()

        job.frames.transition(frame, FrameState.SUCCEEDED, select_candidate, expect=settled, revision=revision)
        _rechain(job, later, frame, revision)
        dispatch_ready(job)
    except BaseException as error:
        _abort(job, revision, error)
        raise
    return RevisionResult(job_id=job.id, revision=revision, frame=frame, regenerating=later)


def parse_options(options) -> RegenerateOptions:
    """The regenerate options (a JSON object); errors name the field as ``options.<field>``."""
    if options is not None and not isinstance(options, dict):
        raise RequestError(f"options: expected a JSON object, got {type(options).__name__}")
    try:
        return RegenerateOptions.model_validate(options or {}, context={"image_models": image_model_registry()})
    except ValidationError as error:
        raise RequestError("; ".join(f"options.{part}" for part in describe_validation_error(error).split("; ")))


def regenerate(job: Job, frame: str, options: RegenerateOptions) -> RevisionResult:
    """Generate the frame again (with a new prompt, enhanced again, and per-frame overrides), and
    with ``cascade`` every frame that depends on it."""
    spec = _check_frame(job, frame)
    overrides = options.overrides.model_dump(exclude_none=True)
    later = dependents(spec.plan, frame) if options.cascade else []
    models = _models(job, spec, [frame, *later])
    models[frame] = overrides.get("image_model") or models[frame]
    _refuse_unaffordable(job, spec, [frame, *later], models)
    record = job.frames.get(frame)
    new_prompt = options.prompt is not None and options.prompt != record.original_prompt
    enhance_again = new_prompt or bool(ENHANCEMENT_OVERRIDES & overrides.keys())
    revision = job.start_revision()
    try:
        def reopen(current: FrameRecord) -> None:
            _reopen(current, revision, f"revision {revision}: regenerated", keep_enhancement=not enhance_again)
            current.overrides = {**current.overrides, **overrides}
            if new_prompt:
                current.original_prompt = options.prompt
            if enhance_again:  # enhanced again (the round ledger is keyed by the prompt)
                current.enhanced_prompt = None
                current.enhancement = Enhancement()

        job.frames.transition(frame, FrameState.WAITING if enhance_again else FrameState.READY, reopen,
                              expect=settled, revision=revision)
        _rechain(job, later, frame, revision)
        if enhance_again:
            send(job, ENHANCE_PROMPT, (job.id, frame))
        else:
            dispatch_ready(job)
    except BaseException as error:
        _abort(job, revision, error)
        raise
    return RevisionResult(job_id=job.id, revision=revision, frame=frame, regenerating=[frame, *later])


def settled(record: FrameRecord) -> bool:
    """A revision starts only on a finished job, whose frames are all settled."""
    return record.state in SETTLED


def _check_frame(job: Job, frame: str) -> JobSpec:
    spec = job.spec  # JobNotFound for an unknown job
    job.refuse_while_running()
    if frame not in {f.name for f in spec.plan.frames}:
        raise RequestError(f"frame: no frame {frame!r} in job {job.id!r} "
                           f"(frames: {', '.join(f.name for f in spec.plan.frames)})")
    return spec


def _models(job: Job, spec: JobSpec, frames: list[str]) -> dict[str, str]:
    records = job.frames.all()
    return {name: spec.frame_config(records[name]).image_model for name in frames}


def _refuse_unaffordable(job: Job, spec: JobSpec, frames: list[str], models: dict[str, str]) -> None:
    """A revision that cannot pay for one image of each frame it generates is refused before it
    starts: otherwise frames would lose their selection to the budget (``models``: frame → model)."""
    cap = spec.config.max_usd
    if cap is None or not frames:
        return
    settings = get_settings()
    needed = sum(image_price(spec, models[name], settings) for name in frames)
    left = cap - job.budget.committed()
    if needed > left + 1e-9:
        raise BudgetRefused(f"overrides.max_usd: this revision needs at least {needed:.4f} USD (one image for each of "
                            f"{', '.join(frames)}); {max(left, 0.0):.4f} of {cap:g} USD is left")


def _reopen(record: FrameRecord, revision: int, why: str, keep_enhancement: bool = True) -> None:
    """Keep the frame's current state in its history and start it again in the new revision."""
    record.history.append(record.snapshot(why))
    record.revision = revision
    record.selected = None
    record.judge = None
    record.variations = []
    record.inputs = []
    record.round = None
    record.clear_notes()
    if keep_enhancement and record.enhancement.note is not None:  # the reused enhancement's fallback
        record.add_note(record.enhancement.note.kind, record.enhancement.note.text)


def _rechain(job: Job, later: list[str], frame: str, revision: int) -> None:
    """Reopen the frames that chain from ``frame``: their enhancement is reused (one that never
    finished is sent again)."""
    records = job.frames.all()
    for name in later:
        enhanced = records[name].enhanced_prompt is not None
        job.frames.transition(name, FrameState.READY if enhanced else FrameState.WAITING,
                              lambda r: _reopen(r, revision, f"revision {revision}: re-chained after {frame}"),
                              expect=settled, revision=revision)
        if not enhanced:
            send(job, ENHANCE_PROMPT, (job.id, name))


def _abort(job: Job, revision: int, error: BaseException) -> None:
    """A revision that failed before it got going: its draft goes, the job is done again with the
    last finished revision's outcome."""
    job.abandon_revision(f"Revision {revision} failed to start ({type(error).__name__}); the job keeps its last "
                         "finished revision", outcome=job.finished_outcome)
