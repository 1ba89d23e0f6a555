"""When each frame runs, and ahead of what.

- Per-frame readiness: a frame's round is enqueued as soon as its own enhancement is stored and
  the frame it chains from is settled (selected, failed or skipped). Both events call
  ``dispatch_ready``; the frame's READY → GENERATING transition happens once, so whichever comes
  second enqueues it, and only once.
- Continuation first: Celery message priorities on Redis (kombu pops a queue's priority-0 list
  before its lower lists). A job's first frame goes out at NEW_JOB priority, every later step of a
  running job at CONTINUATION priority, so running jobs finish before new ones take their slots,
  and jobs complete roughly in submission order. ``FRAMEFLEET_SCHEDULING=fifo`` sends everything
  at one priority (plain queue order) for comparison.
- Slot holding (slot_hold.py): between two rounds of a running job, the slots its last round freed
  wait for its next round instead of going to a new job.
- Straggler cut: ``straggler_check`` stops a variation still running ``straggler_grace_s`` after
  ``min_variations`` of its round were stored.
"""

from __future__ import annotations

import logging
import time

import redis
from celery import chain, chord
from celery.utils import uuid
from framefleet.config.celery import (
    FINALIZE_JOB,
    GENERATE_VARIATION,
    JUDGE_CANDIDATES,
    PRIORITY_STEPS,
    SCORE_VARIATIONS,
    SELECT_VARIATION,
)
from framefleet.config.settings import MAX_VARIATIONS, get_settings
from framefleet.tasks.app import app
from framefleet.tasks.coordination.budget import BudgetGuard
from framefleet.tasks.job.frames import FrameViews, StaleWrite
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.plan import resolve_inputs
from framefleet.tasks.job.records import FrameRecord
from framefleet.tasks.job.spec import JobSpec
from framefleet.tasks.job.states import SETTLED, FrameState, NoteKind, PromptSource
from framefleet.tasks.providers.base import StopCheck
from framefleet.tasks.runtime.celery_compat import results_not_awaited
from framefleet.tasks.runtime.tracing import in_job_trace

log = logging.getLogger(__name__)

CONTINUATION, NEW_JOB = PRIORITY_STEPS[0], PRIORITY_STEPS[-1]  # kombu's Redis transport: 0 is served first


def priority_for(spec: JobSpec, frame: str) -> int:
    if get_settings().scheduling == "fifo" or spec.plan.index_of(frame) > 0:
        return CONTINUATION
    return NEW_JOB


def signature(task: str, args: tuple, priority: int = CONTINUATION, **kwargs):
    # argsrepr: what Flower shows. A chord body's first argument is the results of the step
    # before it, sent later; naming the job and frame here keeps them readable in its row.
    return app.signature(task, args=args, kwargs=kwargs, priority=priority, argsrepr=repr(tuple(args)),
                         kwargsrepr=repr(kwargs))


def send(job: Job, task: str, args: tuple, priority: int = CONTINUATION, **kwargs) -> None:
    """Enqueue one task of the job by name, remembering its id so a cancel can revoke it."""
    send_all(job, [signature(task, args, priority, **kwargs)])


def send_all(job: Job, messages: list) -> None:
    """Enqueue tasks of the job (signatures), their ids remembered first in one write, so a cancel
    can revoke them."""
    if not messages:
        return
    job.ledger.add_task_ids([message.freeze().id for message in messages])
    with in_job_trace(lambda: job.spec.trace):
        for message in messages:
            message.apply_async()


def send_chord(job: Job, header: list, body) -> None:
    """Enqueue a round: its variations (``header``) and the steps that follow them (``body``), each
    with the task id the round's transition recorded (``round_task_ids``)."""
    with in_job_trace(lambda: job.spec.trace), results_not_awaited():
        chord(header, body).apply_async()


def round_task_ids(variations: int) -> list[str]:
    """Ids for a round's tasks: its ``variations``, then scoring, the judge and selection. Recorded
    with the transition that starts the round, before any is sent, so a cancel can revoke them (an
    id the round did not use, a smaller round or no judge, revokes nothing)."""
    return [uuid() for _ in range(variations + 3)]


def next_source(record: FrameRecord) -> PromptSource:
    """Which prompt the frame's next (or current) round uses: the seeds' fallbacks."""
    if record.state is FrameState.GENERATING and record.round is not None:
        return record.round
    if record.state is FrameState.RETRY or record.enhancement.fallback:
        return PromptSource.ORIGINAL
    return PromptSource.ENHANCED


def planned_round_size(source: PromptSource, config) -> int:
    """Variations in a generation round: the configured number, one for the original-prompt retry
    (a spending cap may make a round smaller still: ``enqueue_frame``)."""
    return 1 if source is PromptSource.ORIGINAL else config.num_variations


def enqueue_frame(job: Job, views: FrameViews, frame: str, force: bool = False) -> bool:
    """Start the frame's next round: its inputs from the selections in ``views`` (every frame's
    view, as just read), then its chord. The READY/RETRY → GENERATING transition is the
    once-only guard: a second caller is refused there (StaleWrite) and sends nothing, as is any
    caller once the job is closed (a cancel, finalizing), checked in the same script. ``force``
    re-sends the round of a frame already GENERATING (resume, the watchdog).

    With a spending cap the round gets as many variations as the budget affords; False when not
    even one is (the frame is then skipped, or, in a revision, keeps its last finished selection).
    """
    spec, record = job.spec, job.frames.record_of(views, frame)
    source = next_source(record)
    selections = views.selections()
    config = spec.frame_config(record)
    planned = planned_round_size(source, config)
    ids = round_task_ids(planned)

    def start_round(current: FrameRecord) -> None:
        current.inputs = resolve_inputs(spec.plan, spec.plan.frame(frame), selections)
        current.timings.enqueued = time.time()
        current.round = source

    guard = BudgetGuard(job, spec)
    reached = job.progress.frame_reached_call(spec.kind, "generate", frame, views.settled(), len(views))
    job.frames.transition(frame, FrameState.GENERATING, start_round, while_open=True, expect=lambda r: (
        r.revision == record.revision and (r.state in (FrameState.READY, FrameState.RETRY)
                                           or (force and r.state is FrameState.GENERATING and r.round == source))),
        also=job.ledger.task_id_commands(ids),
        then=None if guard.active else reached)  # under a cap, reported once the budget affords the round
    try:
        count = planned
        if guard.active:  # reserved once per round: a re-sent round reuses its reservation
            count = guard.images_for_frame(frame, count, config.image_model, f"{frame}/{record.revision}/{source}")
            if count == 0:
                if record.revision > 0 and job.frames.keep_finished(frame):
                    return False  # a revision's frame keeps its last finished selection rather than none
                skip(job, frame, NoteKind.BUDGET_SKIPPED, "budget: skipped, not even one image is affordable "
                                                          "under max_usd")
                return False
            reached.run(job.r)
        priority = priority_for(spec, frame)
        header = [signature(GENERATE_VARIATION, (job.id, frame, source.value, index), priority,
                            revision=record.revision, round_size=count).set(task_id=ids[index - 1])
                  for index in range(1, count + 1)]
        staged = (job.id, frame, source.value)
        score_id, judge_id, select_id = ids[planned:]
        links = [signature(SCORE_VARIATIONS, (job.id, frame), priority, revision=record.revision).set(task_id=score_id)]
        if config.judge == "vlm" and count > 1:  # a job without the judge has no extra hop
            links.append(signature(JUDGE_CANDIDATES, staged, priority, revision=record.revision).set(task_id=judge_id))
        links.append(signature(SELECT_VARIATION, staged, priority, revision=record.revision).set(task_id=select_id))
        send_chord(job, header, chain(*links))
    except BaseException:
        if record.state is not FrameState.GENERATING:  # not sent: the step's re-drive must send it
            job.frames.transition(frame, record.state, expect=lambda r: r.state is FrameState.GENERATING)
        raise
    try:  # the slots the job's previous round freed are held for this one: hand them over
        job.rounds.count_round(wake=MAX_VARIATIONS)
    except redis.RedisError as error:  # the round is sent; its slots' holds end after slot_hold_s
        log.warning("job %s: could not end the slot holds for %s: %s", job.id, frame, error)
    return True


def dispatch_ready(job: Job, force: bool = False) -> str | None:
    """Enqueue the next frame that can run, or finalize when every frame is settled.

    Called after every stored enhancement and every stored selection (and by resume and the
    watchdog with ``force``, which also re-sends the round of a frame already generating, whose
    steps died). Returns what it enqueued (a frame name, "finalize") or None when nothing is ready.
    """
    views = job.frames_while_open()
    if views is None:
        return None
    spec = job.spec
    failed_clips = {v.clip for v in views.values() if v.state is FrameState.FAILED and v.clip is not None}
    for planned in spec.plan.frames:
        state = views[planned.name].state
        if state in SETTLED:
            continue
        if spec.kind == "storyboard" and planned.clip in failed_clips:
            skip(job, planned.name, NoteKind.CLIP_FAILED, "skipped: an earlier frame of this clip failed")
            continue
        if state is FrameState.WAITING:
            return None  # its enhancement calls dispatch_ready when it is stored
        if state is FrameState.GENERATING and not force:
            return None  # in flight: its selection dispatches what follows
        try:
            enqueued = enqueue_frame(job, views, planned.name, force)
        except StaleWrite:
            return None  # enqueued or settled meanwhile by another step, which dispatches what follows
        if enqueued:
            return planned.name
        views = job.frames.views()  # skipped (or kept) for the budget: on to the next
    revision = job.revision()
    claim = f"finalize:{revision}"
    claimed = job.leases.claim(claim)
    if claimed or force:
        try:
            send(job, FINALIZE_JOB, (job.id, revision))
        except BaseException:
            if claimed:
                job.leases.unclaim(claim)
            raise
        return "finalize"
    return None


def skip(job: Job, frame: str, kind: NoteKind, why: str) -> None:
    def note(record: FrameRecord) -> None:
        record.add_note(kind, why)

    try:
        job.frames.transition(frame, FrameState.SKIPPED, note, expect=lambda r: r.state not in SETTLED)
    except StaleWrite:
        pass  # settled meanwhile


def straggler_check(job: Job, frame: str, revision: int, source: str, count: int, started: float) -> StopCheck:
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
        if job.cancelled():
            answer = "cancelled"
        elif cut_enabled:
            stored = job.rounds.stored_times(frame, revision, source, count)
            if len(stored) >= needed and time.time() - stored[needed - 1] >= settings.straggler_grace_s:
                answer = f"straggler cut after {time.time() - started:.0f} s"
        return answer

    return should_stop
