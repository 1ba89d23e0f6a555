"""Iterating on a finished job: choose another candidate, regenerate a frame, re-chain what follows.

Each choose or regenerate opens the job's next revision (``JobState.start_revision``): it is
refused while the job is running (the reason names the running revision), so a revision never
runs concurrently with another. The changed frame and every frame that depends on it through the
chain move to the new revision: their current state goes to their ``history`` and they are
generated again under artifact keys that carry the revision, so nothing earlier is overwritten.
Enhancements are reused unless a regenerate gives a new prompt or changes how it is enhanced.
The revision ends like a job: finalize rewrites the manifest (with ``revision`` and each frame's
``history``) and the completion callback is sent once.

A revision is won before it writes anything (a refused request writes nothing), and the frames it
changes are kept as the last finished revision left them (``JobState.update_frame(...,
keep_committed=True)``): a cancel or a failure of the revision puts them back, and the manifest of
the last finished revision stays as it was. A revision the spending cap cannot afford (not one
image per frame it would generate) is refused up front.
"""

from __future__ import annotations

from pydantic import ValidationError

from framefleet.config.celery import ENHANCE_PROMPT
from framefleet.config.settings import get_settings
from framefleet.tasks.coordination.budget import image_price
from framefleet.tasks.job.errors import BudgetRefused, RequestError
from framefleet.tasks.artifacts.keys import frame_key
from framefleet.tasks.job.plan import FramePlan
from framefleet.tasks.providers.adapters import image_model_registry
from framefleet.tasks.job.records import Enhancement, FrameRecord, RevisionResult, Selection
from framefleet.tasks.job.requests import RegenerateOptions, describe_validation_error
from framefleet.tasks.coordination.dispatch import dispatch_ready, send
from framefleet.tasks.job.state import JobSpec, JobState
from framefleet.tasks.artifacts.store import fleet_store

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


def _check_frame(state: JobState, frame: str) -> JobSpec:
    spec = state.spec()  # JobNotFound for an unknown job
    state.refuse_while_running()
    if frame not in {f.name for f in spec.plan.frames}:
        raise RequestError(f"frame: no frame {frame!r} in job {state.job_id!r} "
                           f"(frames: {', '.join(f.name for f in spec.plan.frames)})")
    return spec


def _refuse_unaffordable(state: JobState, spec: JobSpec, frames: list[str], models: dict[str, str]) -> None:
    """A revision that cannot pay for one image of each frame it generates is refused before it
    starts: otherwise frames would lose their selection to the budget (``models``: frame → model)."""
    cap = spec.config.max_usd
    if cap is None or not frames:
        return
    settings = get_settings()
    needed = sum(image_price(spec, models[name], settings) for name in frames)
    left = cap - state.committed_spend()
    if needed > left + 1e-9:
        raise BudgetRefused(f"overrides.max_usd: this revision needs at least {needed:.4f} USD (one image for each of "
                            f"{', '.join(frames)}); {max(left, 0.0):.4f} of {cap:g} USD is left")


def _reopen(record: FrameRecord, revision: int, why: str) -> None:
    """Keep the frame's current state in its history and make it pending in the new revision."""
    record.history.append(record.snapshot(why))
    record.revision = revision
    record.status = "pending"
    record.selected = None
    record.variations = []
    record.inputs = []
    record.warnings = []
    record.fallbacks = ["enhancement failed: original prompt, single image"] if record.enhancement.fallback else []


def _rechain(state: JobState, later: list[str], frame: str, revision: int) -> None:
    for name in later:
        state.update_frame(name, lambda r: _reopen(r, revision, f"revision {revision}: re-chained after {frame}"),
                           keep_committed=True)


def _models(spec: JobSpec, state: JobState, frames: list[str], overrides: dict) -> dict[str, str]:
    records = state.frames()
    return {name: overrides.get("image_model") or spec.frame_config(records[name]).image_model for name in frames}


def _abort(state: JobState, revision: int, error: BaseException) -> None:
    """A revision that failed before it got going: its frames go back, the job is done again."""
    _, outcome = state.restore_committed()
    state.commit_revision()
    state.update_status(state="done", stage="done", outcome=outcome, percent=100.0, active=False,
                        message=f"Revision {revision} failed to start ({type(error).__name__}); "
                                "the job keeps its last finished revision")


def choose(state: JobState, frame: str, variation_index: int) -> dict:
    """Make candidate ``variation_index`` the frame's selection and regenerate its dependents."""
    spec = _check_frame(state, frame)
    record = state.frame(frame)
    candidate = next((v for v in record.variations if v.index == variation_index and v.key), None)
    if candidate is None:
        have = sorted(v.index for v in record.variations if v.key)
        raise RequestError(f"variation_index: {frame} has no generated candidate {variation_index} (have {have})")
    later = dependents(spec.plan, frame)
    _refuse_unaffordable(state, spec, later, _models(spec, state, later, {}))
    revision = state.start_revision()  # the one refused by a concurrent choose or regenerate writes nothing
    try:
        new_key = frame_key(state.job_id, frame, revision)  # this revision's own key: nobody else writes it
        fleet_store().copy(candidate.key, new_key, "image/png")

        def select_candidate(current: FrameRecord) -> None:
            current.history.append(current.snapshot(f"revision {revision}: chose v{variation_index}"))
            current.revision = revision
            current.status = "succeeded"
            for v in current.variations:
                v.rank = None
            overall = candidate.scores.overall if candidate.scores else None
            current.selected = Selection(index=variation_index, key=candidate.key, frame_key=new_key, overall=overall)
            current.fallbacks = []
            current.warnings = []

        state.update_frame(frame, select_candidate, keep_committed=True)
        _rechain(state, later, frame, revision)
        dispatch_ready(state)
    except BaseException as error:
        _abort(state, revision, error)
        raise
    return RevisionResult(job_id=state.job_id, revision=revision, frame=frame, regenerating=later).model_dump(mode="json")


def parse_options(options) -> RegenerateOptions:
    """The regenerate options (a JSON object); errors name the field as ``options.<field>``."""
    if options is not None and not isinstance(options, dict):
        raise RequestError(f"options: expected a JSON object, got {type(options).__name__}")
    try:
        return RegenerateOptions.model_validate(options or {}, context={"image_models": image_model_registry()})
    except ValidationError as error:
        raise RequestError("; ".join(f"options.{part}" for part in describe_validation_error(error).split("; ")))


def regenerate(state: JobState, frame: str, options: RegenerateOptions) -> dict:
    """Generate the frame again (with a new prompt, enhanced again, and per-frame overrides), and
    with ``cascade`` every frame that depends on it."""
    spec = _check_frame(state, frame)
    overrides = options.overrides.model_dump(exclude_none=True)
    later = dependents(spec.plan, frame) if options.cascade else []
    models = _models(spec, state, [frame, *later], {})
    models[frame] = overrides.get("image_model") or models[frame]
    _refuse_unaffordable(state, spec, [frame, *later], models)
    revision = state.start_revision()
    try:
        def reopen(record: FrameRecord) -> None:
            _reopen(record, revision, f"revision {revision}: regenerated")
            record.overrides = {**record.overrides, **overrides}
            new_prompt = options.prompt is not None and options.prompt != record.original_prompt
            if new_prompt:
                record.original_prompt = options.prompt
            if new_prompt or ENHANCEMENT_OVERRIDES & overrides.keys():
                record.enhanced_prompt = None  # enhanced again (the round ledger is keyed by the prompt)
                record.enhancement = Enhancement()
                record.fallbacks = []

        record = state.update_frame(frame, reopen, keep_committed=True)
        _rechain(state, later, frame, revision)
        if record.enhanced_prompt is None:
            send(state, ENHANCE_PROMPT, (state.job_id, frame))
        else:
            dispatch_ready(state)
    except BaseException as error:
        _abort(state, revision, error)
        raise
    return RevisionResult(job_id=state.job_id, revision=revision, frame=frame,
                          regenerating=[frame, *later]).model_dump(mode="json")
