"""The states a job and each of its frames go through, the transitions that are legal, and the
typed notes (fallbacks and warnings) a frame collects on the way.

Every change of a frame's state goes through ``Frames.transition`` (job/frames.py), which checks
it against FRAME_TRANSITIONS and writes by compare-and-set: a late or duplicate step asks for a
transition the table refuses, and nothing is written. The job's own state is the status hash's
``state``; its writes check JOB_TRANSITIONS the same way (job/progress.py).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel


class PromptSource(StrEnum):
    """Which prompt a generation round of a frame uses, and so which prompt it is scored against."""

    ENHANCED = "enhanced"
    ORIGINAL = "original"  # the enhancement fell back, or the enhanced round produced no image


class FrameState(StrEnum):
    WAITING = "waiting"  # for its enhancement
    READY = "ready"  # enhanced; its round waits for the frame it chains from
    RETRY = "retry"  # its enhanced round produced no image: one image with the original prompt next
    GENERATING = "generating"  # a round is enqueued (``FrameRecord.round`` says which)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


SETTLED = frozenset({FrameState.SUCCEEDED, FrameState.FAILED, FrameState.SKIPPED})
REOPENED = frozenset({FrameState.WAITING, FrameState.READY})  # where a revision puts the frames it changes

FRAME_TRANSITIONS: dict[FrameState, frozenset[FrameState]] = {
    FrameState.WAITING: frozenset({FrameState.READY, FrameState.SKIPPED}),
    FrameState.READY: frozenset({FrameState.GENERATING, FrameState.SKIPPED}),
    FrameState.RETRY: frozenset({FrameState.GENERATING, FrameState.SKIPPED}),
    # GENERATING → GENERATING: its round sent again (resume, the watchdog); → READY / RETRY: the
    # round could not be sent after all; → SKIPPED: the budget cannot pay for one image of it.
    FrameState.GENERATING: frozenset({FrameState.GENERATING, FrameState.SUCCEEDED, FrameState.FAILED,
                                      FrameState.RETRY, FrameState.READY, FrameState.SKIPPED}),
    # A revision reopens a settled frame, or (choose) selects another of its candidates.
    FrameState.SUCCEEDED: REOPENED | {FrameState.SUCCEEDED},
    FrameState.FAILED: REOPENED,
    FrameState.SKIPPED: REOPENED,
}

FrameStatus = Literal["pending", "succeeded", "failed", "skipped"]


def status_of(state: FrameState) -> FrameStatus:
    """A frame's status as the manifest shows it: every unsettled state is "pending"."""
    return state.value if state in SETTLED else "pending"  # type: ignore[return-value]


class JobState(StrEnum):
    """The status hash's ``state``."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


UNFINISHED = frozenset({JobState.QUEUED, JobState.RUNNING})  # counted by state (job/metrics.py)

# What each job state may become. DONE → RUNNING only by starting a revision (a transaction of its
# own, job/model.py); a step's progress report never turns a finished job back to running.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.QUEUED, JobState.RUNNING, JobState.DONE}),
    JobState.RUNNING: frozenset({JobState.RUNNING, JobState.DONE}),
    JobState.DONE: frozenset({JobState.DONE}),
}


def allowed_from(target: JobState) -> list[str]:
    """The job states a write that moves the job to ``target`` may start from."""
    return [state.value for state, targets in JOB_TRANSITIONS.items() if target in targets]


class NoteKind(StrEnum):
    """What a note on a frame is about. The fallbacks are the seeds' table; the rest are warnings."""

    ENHANCEMENT_FAILED = "enhancement_failed"
    ENHANCEMENT_RATE_LIMITED = "enhancement_rate_limited"
    ENHANCEMENT_BUDGET = "enhancement_budget"
    VARIATION_FAILED = "variation_failed"  # a failed or cut variation (the frame goes on with the others)
    RETRY_ORIGINAL = "retry_original"  # no enhanced image: one image with the original prompt
    GENERATION_FAILED = "generation_failed"  # no image at all: the frame failed
    SCORING_FAILED = "scoring_failed"
    RANKING_FAILED = "ranking_failed"
    CLIP_FAILED = "clip_failed"  # skipped: an earlier frame of its clip failed
    BUDGET_SKIPPED = "budget_skipped"
    QUALITY_LOW = "quality_low"  # warning: below the quality threshold (the image is kept)
    METRIC_FAILED = "metric_failed"  # warning: one scoring metric failed, the others re-weighted
    JUDGE_FAILED = "judge_failed"  # the vision judge failed or timed out: the score order stands
    JUDGE_BUDGET = "judge_budget"  # the spending cap could not pay the judge: the score order stands


WARNINGS = frozenset({NoteKind.QUALITY_LOW, NoteKind.METRIC_FAILED})


class Note(BaseModel):
    """A fallback taken or a warning, with the text the manifest shows."""

    kind: NoteKind
    text: str

    @property
    def is_fallback(self) -> bool:
        return self.kind not in WARNINGS
