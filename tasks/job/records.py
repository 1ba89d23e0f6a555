"""The records a job keeps: per-variation, per-frame, the status record and the manifest.

These models are the manifest schema (docs/manifest.md): change them only additively.
"""

from __future__ import annotations

from typing import Literal

from framefleet.tasks.job.states import FrameState, FrameStatus, Note, NoteKind, PromptSource, status_of
from pydantic import BaseModel, Field

Span = tuple[float, float]
JobOutcome = Literal["succeeded", "partial", "failed", "cancelled"]


class Scores(BaseModel):
    pickscore: float | None = None
    clip_score: float | None = None
    aesthetic: float | None = None
    overall: float | None = None
    consistency: list[float] | None = None  # cosine to each input image, in `inputs` order
    hps: float | None = None  # HPSv2.1, where the score weights use it
    # What each metric added to `overall` (its share of the weights times its value; they add up).
    contributions: dict[str, float] | None = None


class VariationRecord(BaseModel):
    """What one generation task returns (the chord header result) and the manifest keeps."""

    index: int
    key: str | None = None
    prompt_source: Literal["enhanced", "original"] = "enhanced"
    scores: Scores | None = None
    rank: int | None = None
    error: str | None = None
    timing: Span | None = None
    queue_wait: float | None = None  # seconds from the frame's enqueue to this generation's start
    thumbnail_key: str | None = None  # the contact sheet's tile of this image, written by scoring


class Enhancement(BaseModel):
    iterations: int = 0
    skipped: bool = False  # the job asked for no enhancement (overrides.enhance = false)
    final_score: float | None = None
    fallback: bool = False
    error: str | None = None
    note: Note | None = None  # the fallback it took: a revision that reuses the enhancement keeps it


class Selection(BaseModel):
    index: int
    key: str
    frame_key: str
    overall: float | None = None


class JudgeVerdict(BaseModel):
    """One answer of the vision judge, for the two candidates in the order it was shown them.
    Each verdict names a variation index, or None for a tie."""

    shown: list[int]  # variation indices: the first was "A", the second "B"
    preferred: int | None = None
    continuity: int | None = None  # same characters, objects and setting as the inputs
    prompt_adherence: int | None = None
    defects: int | None = None  # the one with fewer visible defects
    reason: str = ""


class JudgeRecord(BaseModel):
    """The vision judge's comparison of a frame's two best-scored candidates (tasks/steps/judge.py)."""

    provider: str  # "openai" | "offline"
    model: str
    candidates: list[int]  # the variations compared, in score order (rank 1 first)
    gap: float  # their overall scores' difference (within the job's judge_margin)
    verdicts: list[JudgeVerdict] = []  # one per order asked (both orders cancel position bias)
    winner: int | None = None  # the variation both orders preferred; None: they disagreed or tied
    agreed_with_scores: bool | None = None  # whether the winner is the score order's first (None: no winner)
    selected: int  # the variation selection took: the winner, else the score order's first
    reason: str
    error: str | None = None  # the judge failed (JUDGE_FAILED / JUDGE_BUDGET note): the score order stands


class FrameTimings(BaseModel):
    enqueued: float | None = None  # when the frame's generations were enqueued (epoch seconds)
    enhance: Span | None = None
    variations: list[Span] = []
    score: Span | None = None


class FrameRevision(BaseModel):
    """An earlier state of a frame, kept when a choose or regenerate replaced it (nothing is lost:
    its artifact keys stay valid, later revisions write under keys of their own)."""

    revision: int
    status: FrameStatus
    original_prompt: str
    enhanced_prompt: str | None = None
    variations: list[VariationRecord] = []
    selected: Selection | None = None
    warnings: list[str] = []
    fallbacks: list[str] = []
    judge: JudgeRecord | None = None
    replaced_by: str  # why it was replaced, e.g. "revision 2: chose v3"


class FrameRecord(BaseModel):
    name: str
    clip: int | None = None
    state: FrameState = FrameState.WAITING  # job/states.py; changed only by Frames.transition
    round: PromptSource | None = None  # the round enqueued while the frame is generating
    status: FrameStatus = "pending"  # the state as the manifest shows it (status_of)
    revision: int = 0  # the job revision of the current selection (iteration: choose, regenerate)
    inputs: list[str] = []
    original_prompt: str
    enhanced_prompt: str | None = None
    enhancement: Enhancement = Enhancement()
    variations: list[VariationRecord] = []
    selected: Selection | None = None
    scorer: str | None = None
    warnings: list[str] = []
    fallbacks: list[str] = []
    timings: FrameTimings = FrameTimings()
    overrides: dict = {}  # per-frame overrides of a regenerate (num_variations, image_model, ...)
    history: list[FrameRevision] = []  # earlier revisions of this frame, oldest first
    notes: list[Note] = []  # the fallbacks and warnings, typed (their text is in those lists too)
    judge: JudgeRecord | None = None  # the vision judge's comparison, when it judged this frame

    def enter(self, state: FrameState) -> None:
        """Called by Frames.transition only, once the transition table allowed it."""
        self.state = state
        self.status = status_of(state)

    def add_note(self, kind: NoteKind, text: str) -> None:
        note = Note(kind=kind, text=text)
        self.notes.append(note)
        (self.fallbacks if note.is_fallback else self.warnings).append(text)

    def has_note(self, kind: NoteKind) -> bool:
        return any(note.kind is kind for note in self.notes)

    def clear_notes(self) -> None:
        self.notes, self.warnings, self.fallbacks = [], [], []

    def snapshot(self, replaced_by: str) -> FrameRevision:
        return FrameRevision(revision=self.revision, status=self.status, original_prompt=self.original_prompt,
                             enhanced_prompt=self.enhanced_prompt, variations=self.variations,
                             selected=self.selected, warnings=self.warnings, fallbacks=self.fallbacks,
                             judge=self.judge, replaced_by=replaced_by)


class JobTimings(BaseModel):
    submitted: float
    finished: float | None = None


class Cost(BaseModel):
    """Counters per frame and for the job, and what they cost at the prices in settings."""

    frames: dict[str, dict[str, int]] = {}
    total: dict[str, int] = {}
    estimated_usd: float = 0.0


class Budget(BaseModel):
    """The job's spending cap (``overrides.max_usd``) and what the guard did to keep it."""

    max_usd: float
    committed_usd: float = 0.0  # estimates of every paid call made, checked against the cap before each
    degradations: list[str] = []  # "frame: what was given up", in the order it happened


class Manifest(BaseModel):
    job_id: str
    kind: Literal["storyboard", "references"]
    status: JobOutcome
    scorer: str
    providers: dict[str, str]
    config: dict
    failed_clips: list[int] = []
    warnings: list[str] = []
    timings: JobTimings
    frames: list[FrameRecord]
    cost: Cost = Cost()
    contact_sheet: dict[str, str] = {}  # {"png": key, "html": key}
    revision: int = 0  # 0 for the first run; every choose or regenerate adds one
    budget: Budget | None = None


class JobStatus(BaseModel):
    """The progress record a main app reads: typed here (``framefleet.jobs.status``), and as text
    in the Redis hash ``framefleet:job:{id}:status`` (Redis stores strings: numbers in decimal,
    None as the empty string). ``percent`` never decreases within a revision."""

    job_id: str
    kind: str
    state: Literal["queued", "running", "done"] = "queued"
    stage: str = "queued"
    message: str = ""
    percent: float = 0.0
    prompts_enhanced: int = 0
    frames_done: int = 0
    frames_total: int = 0
    current_frame: str | None = None
    outcome: JobOutcome | None = None
    manifest_key: str | None = None
    updated_at: float = Field(default=0.0)
    redrives: int = 0  # steps the watchdog re-sent because their worker died, and stalls it resumed
    revision: int = 0  # the revision running or last finished

    def stalled_for(self, now: float) -> float:
        """Seconds without progress of a job that is not done (0 when done)."""
        return 0.0 if self.state == "done" else max(0.0, now - self.updated_at)


class JobEvent(BaseModel):
    """One status change, published as JSON on the Redis channel ``framefleet:job:{id}:events``."""

    state: Literal["queued", "running", "done"]
    stage: str
    message: str
    percent: float
    frame: str | None = None  # the frame the change is about, where there is one
    revision: int = 0


class CompletionCallback(BaseModel):
    """The one argument of the main app's completion callback task, sent by name at the end of every revision."""

    job_id: str
    kind: Literal["storyboard", "references"]
    status: JobOutcome
    revision: int = 0
    manifest_key: str
    failed_clips: list[int] = []


# What each task returns to its caller (README, "Main-app contract"; `framefleet schema result NAME`).
class CreateResult(BaseModel):
    """``framefleet.storyboard.create`` / ``framefleet.references.create``."""

    job_id: str
    frames: int  # frames in the job's plan


class CancelResult(BaseModel):
    """``framefleet.jobs.cancel``."""

    job_id: str
    cancelled: bool  # false: the job had already finished (``reason`` says so)
    revision: int = 0  # the revision the cancel stopped
    reason: str | None = None
    predictions_cancelled: int = 0  # paid predictions in flight that were cancelled at the provider


class RevisionResult(BaseModel):
    """``framefleet.frames.choose`` and ``framefleet.frames.regenerate``: the revision they started."""

    job_id: str
    revision: int
    frame: str
    regenerating: list[str]  # the frames generated again in this revision, in plan order


class ResumeResult(BaseModel):
    """``framefleet.jobs.resume``."""

    job_id: str
    resumed_at: str  # what was sent again ("running" / "nothing to do" when nothing was)


class JobSummary(BaseModel):
    """One row of ``framefleet.jobs.list`` (newest first)."""

    job_id: str
    kind: Literal["storyboard", "references"] | None = None
    state: Literal["queued", "running", "done"]
    stage: str
    revision: int = 0
    outcome: JobOutcome | None = None
    percent: float = 0.0
    updated_at: float | None = None
    parked: str | None = None  # why the watchdog parked the job, if it did


# ``framefleet schema result NAME``: each entry task's return value.
TASK_RESULTS = {
    "create": CreateResult, "status": JobStatus, "cancel": CancelResult, "choose": RevisionResult,
    "regenerate": RevisionResult, "resume": ResumeResult, "list": list[JobSummary],
}
MAX_LIST_LIMIT = 1000  # framefleet.jobs.list: rows at most
