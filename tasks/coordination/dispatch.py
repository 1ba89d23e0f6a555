"""When each frame runs, and ahead of what.

- Per-frame readiness: a frame is enqueued as soon as its own enhancement is stored and the frame
  it chains from is settled (selected, failed or skipped). Both events call ``dispatch_ready``;
  whichever comes second enqueues the frame, once (a Redis claim).
- Continuation first: Celery message priorities on Redis (kombu polls the `queue` list before
  the lower priority lists, written `queue:9` here). A job's first frame goes out at NEW_JOB priority, every later step of a running job
  at CONTINUATION priority, so running jobs finish before new ones take their slots, and jobs
  complete roughly in submission order. ``FRAMEFLEET_SCHEDULING=fifo`` sends everything at one
  priority (plain queue order) for comparison.
- Slot holding (tasks/coordination/slot_hold.py): between two rounds of a running job, the slots its last
  round freed wait for its next round instead of going to a new job.
- Straggler cut: ``straggler_check`` stops a variation still running ``straggler_grace_s`` after
  ``min_variations`` of its frame's variations were stored.
"""

from __future__ import annotations

import logging
import time

import redis
from celery import chord

from framefleet.config.celery import (FINALIZE_JOB, GENERATE_VARIATION, PRIORITY_STEPS, SCORE_VARIATIONS,
                                      SELECT_VARIATION)
from framefleet.config.settings import MAX_VARIATIONS, get_settings
from framefleet.tasks.coordination.budget import BudgetGuard
from framefleet.tasks.artifacts.keys import ENHANCED, ORIGINAL
from framefleet.tasks.job.plan import resolve_inputs
from framefleet.tasks.job.records import FrameRecord
from framefleet.tasks.job.state import JobSpec, JobState, StaleWrite
from framefleet.tasks.app import app
from framefleet.tasks.providers.base import StopCheck

log = logging.getLogger(__name__)

CONTINUATION, NEW_JOB = PRIORITY_STEPS[0], PRIORITY_STEPS[-1]  # kombu's Redis transport: 0 is served first
RETRY_WITH_ORIGINAL_PROMPT = "generation failed: one image with the original prompt"


def priority_for(spec: JobSpec, frame: str) -> int:
    if get_settings().scheduling == "fifo" or spec.plan.index_of(frame) > 0:
        return CONTINUATION
    return NEW_JOB


def _signature(task: str, args: tuple, priority: int, **kwargs):
    # argsrepr: what Flower shows. A chord body's first argument is the results of the step
    # before it, sent later; naming the job and frame here keeps them readable in its row.
    return app.signature(task, args=args, kwargs=kwargs, priority=priority, argsrepr=repr(tuple(args)),
                         kwargsrepr=repr(kwargs))


def send(state: JobState, task: str, args: tuple, priority: int = CONTINUATION, **kwargs) -> None:
    """Enqueue one task of the job by name, remembering its id so a cancel can revoke it."""
    signature = _signature(task, args, priority, **kwargs)
    state.add_task_ids([signature.freeze().id])
    signature.apply_async()


def send_chord(state: JobState, header: list, body) -> None:
    ids = [signature.freeze().id for signature in header]
    result = body.freeze()
    while result is not None:  # a chain body: its last task's result links back to the first
        ids.append(result.id)
        result = result.parent
    state.add_task_ids(ids)
    chord(header, body).apply_async()


def planned_round_size(stage: str, config) -> int:
    """Variations in a generation round: the configured number, one for the original-prompt retry
    (a spending cap may make a round smaller still: ``enqueue_frame``)."""
    return 1 if stage == ORIGINAL else config.num_variations


def frame_stage(record: FrameRecord) -> str:
    """Which prompt the frame's next generation round uses (the seeds' fallbacks)."""
    if record.enhancement.fallback or RETRY_WITH_ORIGINAL_PROMPT in record.fallbacks:
        return ORIGINAL
    return ENHANCED


def enqueue_frame(state: JobState, spec: JobSpec, frames: dict[str, FrameRecord], frame: str, stage: str) -> bool:
    """Resolve the frame's input images from the selections in ``frames`` (the job's frame
    records, as just read) and enqueue its chord.

    With a spending cap the round gets as many variations as the budget affords; False when not
    even one is (the frame is then skipped with "budget" in its fallbacks).
    """
    selections = {name: f.selected.frame_key for name, f in frames.items() if f.selected is not None}
    config = spec.frame_config(frames[frame])
    count = planned_round_size(stage, config)
    guard = BudgetGuard(state, spec)
    if guard.active:  # reserved once per round: a re-sent round reuses its reservation
        count = guard.images_for_frame(frame, count, config.image_model, f"{frames[frame].revision}/{stage}")
        if count == 0:
            if frames[frame].revision > 0 and state.restore_committed(frame)[0]:
                return False  # a revision's frame keeps its last finished selection rather than none
            _skip(state, frame, "budget: skipped, not even one image is affordable under max_usd")
            return False

    def set_inputs(record: FrameRecord) -> None:
        if record.status != "pending":
            raise StaleWrite(f"{frame} is already {record.status}")
        record.inputs = resolve_inputs(spec.plan, spec.plan.frame(frame), selections)
        record.timings.enqueued = time.time()

    record = state.update_frame(frame, set_inputs)
    priority = priority_for(spec, frame)
    done = sum(f.status != "pending" for f in frames.values())
    state.frame_stage(spec.kind, "generate", frame, done, len(frames))
    revision = record.revision
    header = [_signature(GENERATE_VARIATION, (state.job_id, frame, stage, index), priority,
                         revision=revision, round_size=count)
              for index in range(1, count + 1)]
    body = (_signature(SCORE_VARIATIONS, (state.job_id, frame), priority, revision=revision)
            | _signature(SELECT_VARIATION, (state.job_id, frame, stage), priority, revision=revision))
    send_chord(state, header, body)
    try:  # the slots the job's previous round freed are held for this one: hand them over
        state.count_round(wake=MAX_VARIATIONS)
    except redis.RedisError as error:  # the round is sent; its slots' holds end after slot_hold_s
        log.warning("job %s: could not end the slot holds for %s: %s", state.job_id, frame, error)
    return True


def dispatch_ready(state: JobState, force: bool = False) -> str | None:
    """Enqueue the next frame that can run, or finalize when every frame is settled.

    Called after every stored enhancement and every stored selection (and by resume/watchdog
    with ``force``, which sends even where the once-only claim is taken, to re-send a frame
    whose steps died; it still takes a free claim, so no later step sends the frame again).
    Returns what it enqueued (a frame name, "finalize") or None when nothing is ready yet.
    """
    if state.closed():
        return None
    spec = state.spec()
    frames = state.frames()
    failed_clips = {f.clip for f in frames.values() if f.status == "failed" and f.clip is not None}
    for planned in spec.plan.frames:
        record = frames[planned.name]
        if record.status != "pending":
            continue
        if spec.kind == "storyboard" and planned.clip in failed_clips:
            _skip(state, planned.name)  # its start frame failed: nothing to end, go to the next clip
            continue
        if record.enhanced_prompt is None:
            return None  # its enhancement will call dispatch_ready when it is stored
        stage = frame_stage(record)
        claim = f"enqueue:{planned.name}/{record.revision}/{stage}"
        claimed = state.claim(claim)
        if not (claimed or force):
            return None  # already enqueued by another step
        try:
            enqueued = enqueue_frame(state, spec, frames, planned.name, stage)
        except StaleWrite:
            return None  # settled meanwhile by another step, which dispatches what follows
        except BaseException:
            if claimed:
                state.unclaim(claim)  # not sent: the step's re-drive must be able to send it
            raise
        if enqueued:
            return planned.name
        frames[planned.name] = state.frame(planned.name)  # skipped for the budget: on to the next
    revision = state.revision()
    claim = f"finalize:{revision}"
    claimed = state.claim(claim)
    if claimed or force:
        try:
            send(state, FINALIZE_JOB, (state.job_id, revision))
        except BaseException:
            if claimed:
                state.unclaim(claim)
            raise
        return "finalize"
    return None


def _skip(state: JobState, frame: str, why: str = "skipped: an earlier frame of this clip failed") -> None:
    def skip(record: FrameRecord) -> None:
        if record.status == "pending":
            record.status = "skipped"
            record.fallbacks.append(why)

    state.update_frame(frame, skip)


def straggler_check(state: JobState, frame: str, revision: int, stage: str, count: int,
                    started: float) -> StopCheck:
    """A stop check for one variation: "cancelled", or a straggler cut once ``min_variations`` of
    the round's ``count`` images are stored and this one is still running ``straggler_grace_s``
    later. Reads Redis at most twice a second (no provider calls)."""
    settings = get_settings()
    needed = min(settings.min_variations, count)
    cut_enabled = needed < count
    last_check, answer = 0.0, None

    def should_stop() -> str | None:
        nonlocal last_check, answer
        now = time.monotonic()
        if now - last_check < 0.5:
            return answer
        last_check = now
        if state.cancelled():
            answer = "cancelled"
        elif cut_enabled:
            stored = state.stored_times(frame, revision, stage)
            if len(stored) >= needed and time.time() - stored[needed - 1] >= settings.straggler_grace_s:
                answer = f"straggler cut after {time.time() - started:.0f} s"
        return answer

    return should_stop
