"""Iterating on a finished job: choose another candidate, regenerate a frame, re-chain what follows.

Each choose or regenerate opens the job's next revision (``JobState.start_revision``): it is
refused while the job is running (the reason names the running revision), so a revision never
runs concurrently with another. The changed frame and every frame that depends on it through the
chain move to the new revision: their current state goes to their ``history`` and they are
generated again under artifact keys that carry the revision, so nothing earlier is overwritten.
Enhancements are reused unless a regenerate gives a new prompt. The revision ends like a job:
finalize rewrites the manifest (with ``revision`` and each frame's ``history``) and the
completion callback is sent once.
"""

from __future__ import annotations

from pydantic import ValidationError

from framefleet.tasks.keys import frame_key
from framefleet.tasks.plan import FramePlan
from framefleet.tasks.records import Enhancement, FrameRecord, Selection
from framefleet.tasks.requests import RegenerateOptions, RequestError, describe_validation_error
from framefleet.tasks.scheduling import dispatch_ready, send
from framefleet.tasks.state import JobState
from framefleet.tasks.store import fleet_store


def dependents(plan: FramePlan, frame: str) -> list[str]:
    """Frames whose input images contain ``frame``, directly or through the chain, in plan order."""
    changed, out = {frame}, []
    for planned in plan.frames[plan.index_of(frame) + 1:]:
        if planned.chain_from in changed:
            changed.add(planned.name)
            out.append(planned.name)
    return out


def _check_frame(state: JobState, frame: str) -> FramePlan:
    plan = state.spec().plan  # KeyError naming job_id for an unknown job
    state.refuse_while_running()
    if frame not in {f.name for f in plan.frames}:
        raise RequestError(f"frame: no frame {frame!r} in job {state.job_id!r} "
                           f"(frames: {', '.join(f.name for f in plan.frames)})")
    return plan


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


def _rechain(state: JobState, plan: FramePlan, frame: str, revision: int) -> list[str]:
    later = dependents(plan, frame)
    for name in later:
        state.update_frame(name, lambda r: _reopen(r, revision, f"revision {revision}: re-chained after {frame}"))
    return later


def choose(state: JobState, frame: str, variation_index: int) -> dict:
    """Make candidate ``variation_index`` the frame's selection and regenerate its dependents."""
    plan = _check_frame(state, frame)
    record = state.frame(frame)
    candidate = next((v for v in record.variations if v.index == variation_index and v.key), None)
    if candidate is None:
        have = sorted(v.index for v in record.variations if v.key)
        raise RequestError(f"variation_index: {frame} has no generated candidate {variation_index} (have {have})")
    # Copy the candidate before the revision starts: a failure here leaves the job as it was.
    new_key = frame_key(state.job_id, frame, state.revision() + 1)
    store = fleet_store()
    store.copy(candidate.key, new_key, "image/png")
    revision = state.start_revision()
    if frame_key(state.job_id, frame, revision) != new_key:  # another revision started in between
        new_key = frame_key(state.job_id, frame, revision)
        store.copy(candidate.key, new_key, "image/png")

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

    state.update_frame(frame, select_candidate)
    later = _rechain(state, plan, frame, revision)
    dispatch_ready(state)
    return {"job_id": state.job_id, "revision": revision, "frame": frame, "regenerating": later}


def parse_options(options) -> RegenerateOptions:
    """The regenerate options (a JSON object); errors name the field as ``options.<field>``."""
    if options is not None and not isinstance(options, dict):
        raise RequestError(f"options: expected a JSON object, got {type(options).__name__}")
    try:
        return RegenerateOptions.model_validate(options or {})
    except ValidationError as error:
        raise RequestError("; ".join(f"options.{part}" for part in describe_validation_error(error).split("; ")))


def regenerate(state: JobState, frame: str, options: RegenerateOptions) -> dict:
    """Generate the frame again (with a new prompt, enhanced again, and per-frame overrides), and
    with ``cascade`` every frame that depends on it."""
    plan = _check_frame(state, frame)
    revision = state.start_revision()
    overrides = options.overrides.model_dump(exclude_none=True)

    def reopen(record: FrameRecord) -> None:
        _reopen(record, revision, f"revision {revision}: regenerated")
        record.overrides = {**record.overrides, **overrides}
        if options.prompt is not None and options.prompt != record.original_prompt:
            record.original_prompt = options.prompt
            record.enhanced_prompt = None  # enhanced again, as a new conversation (ledger by prompt)
            record.enhancement = Enhancement()
            record.fallbacks = []

    record = state.update_frame(frame, reopen)
    later = _rechain(state, plan, frame, revision) if options.cascade else []
    if record.enhanced_prompt is None:
        send(state, "framefleet.prompts.enhance", (state.job_id, frame))
    else:
        dispatch_ready(state)
    return {"job_id": state.job_id, "revision": revision, "frame": frame, "regenerating": [frame, *later]}
