"""What a main app reads about a job: the status record, its events and its history.

The status record is a Redis hash (text values: numbers in decimal, None as the empty string) and
``framefleet.jobs.status`` returns it typed (JobStatus); every change is published on the job's
events channel as a JobEvent. A write names the job state it moves to, and the transition table
(job/states.py JOB_TRANSITIONS) decides whether it may: a step's progress report never turns a
finished job back to running.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from framefleet.tasks.job import metrics
from framefleet.tasks.job.errors import JobNotFound
from framefleet.tasks.job.keys import ACTIVE_JOBS, FLEET_METRICS, JOB_STATE_COUNTS
from framefleet.tasks.job.records import JobStatus
from framefleet.tasks.job.redis import ScriptCall
from framefleet.tasks.job.states import JobState, allowed_from

if TYPE_CHECKING:
    from framefleet.tasks.job.model import Job

STAGE_MESSAGES = {
    "references": {
        "enhance": "Enhancing prompts for reference images",
        "generate": "Generating reference image variations",
        "score": "Scoring and ranking reference images",
    },
    "storyboard": {
        "enhance": "Enhancing prompts for storyboard frames",
        "generate": "Generating storyboard frame variations",
        "score": "Scoring and ranking storyboard frames",
    },
}
# Share of the progress bar: enhancement first, then the frames, finalize the last step.
ENHANCE_SHARE, FRAMES_SHARE = 10.0, 85.0


def flatten(fields: dict) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in fields.items()}


def typed(raw: dict[str, str]) -> dict:
    return {k: (None if v == "" else v) for k, v in raw.items()}


class Progress:
    def __init__(self, job: "Job"):
        self.job, self.r, self.keys = job, job.r, job.keys

    def read(self) -> JobStatus:
        raw = self.r.hgetall(self.keys.status)
        if not raw:
            raise JobNotFound(f"job_id: no job {self.job.id!r}")
        return JobStatus.model_validate(typed(raw))

    def write(self, to: JobState | None = None, *, progress: bool = False, active: bool | None = None,
              count: tuple[str, float, int] | None = None, on_entering: metrics.Increments | None = None,
              **fields) -> bool:
        """Write status fields (``to``: the job state they move it to), append the message to the
        history and publish the change (in the same script, so events keep the order of writes).
        ``progress``: a step's report, whose ``percent`` never lowers the stored one. ``active``:
        put the job on (True) or take it off (False) the watchdog's active list in the same
        transaction, so nobody sees a finished job still active or a running one inactive.
        ``count``: (a counter field, its share of the progress bar, its total): adds one to the
        counter and sets ``percent`` from it, in the same write. ``on_entering``: fleet metrics
        counted only if this write changes the job's state (job/metrics.py). False when nothing was
        written (the job is gone, or the table refuses the move)."""
        return bool(self.write_call(to, progress=progress, active=active, count=count, on_entering=on_entering,
                                    **fields).run(self.r))

    def write_call(self, to: JobState | None = None, *, progress: bool = False, active: bool | None = None,
                   count: tuple[str, float, int] | None = None, on_entering: metrics.Increments | None = None,
                   **fields) -> ScriptCall:
        """``write`` as a script call, for a write it must follow (``chain``)."""
        if to is not None:
            fields["state"] = to.value
        fields["updated_at"] = time.time()
        history = f"{fields.get('stage', '')}: {fields['message']}" if "message" in fields else ""
        allowed = ",".join(allowed_from(to)) if to is not None else ""
        return ScriptCall(
            "write_status", [self.keys.status, self.keys.history, ACTIVE_JOBS, JOB_STATE_COUNTS, FLEET_METRICS,
                             self.keys.events],
            [allowed, "1" if progress else "0", history, {None: "", True: "add", False: "rem"}[active],
             self.job.id, self.job.ttl, *(count or ("", 0, 0)), *metrics.script_args(on_entering or {}),
             *[part for item in flatten(fields).items() for part in item]])

    def prompt_enhanced_call(self, kind: str, frames_total: int) -> ScriptCall:
        """The frame's enhancement is stored: one more prompt counted (chained after that write)."""
        return self.write_call(JobState.RUNNING, progress=True, stage="enhance",
                               message=STAGE_MESSAGES[kind]["enhance"],
                               count=("prompts_enhanced", ENHANCE_SHARE, frames_total))

    def frame_reached_call(self, kind: str, stage: str, frame: str, frames_done: int, frames_total: int) -> ScriptCall:
        """A frame's round was enqueued (stage "generate") or is selected ("score"): chained after
        the frame's transition, so a transition refused reports nothing."""
        return self.write_call(JobState.RUNNING, progress=True, stage=stage, message=STAGE_MESSAGES[kind][stage],
                               current_frame=frame, frames_done=frames_done,
                               percent=round(ENHANCE_SHARE + FRAMES_SHARE * frames_done / frames_total, 1))

    def count_redrives(self, steps: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(self.keys.status, "redrives", steps)
        pipe.hincrbyfloat(FLEET_METRICS, "step_redrives_total", steps)
        pipe.execute()

    def history(self) -> list[str]:
        return self.r.lrange(self.keys.history, 0, -1)

    def subscribe(self):
        """A pub/sub connection listening to the job's events (close it when done)."""
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.events)
        return pubsub
