"""A job's spec: what was asked, compiled and resolved at create, then never changed."""

from __future__ import annotations

from framefleet.tasks.job.plan import FramePlan
from framefleet.tasks.job.records import FrameRecord
from framefleet.tasks.job.requests import Callback, JobConfig
from pydantic import BaseModel


class JobSpec(BaseModel):
    job_id: str
    kind: str
    aspect_ratio: str
    config: JobConfig
    plan: FramePlan
    providers: dict[str, str]
    submitted: float
    callback: Callback | None = None
    trace: dict[str, str] = {}  # the create's trace context (W3C headers) when workers trace: the job's trace

    def frame_config(self, record: FrameRecord) -> JobConfig:
        """The job's config with the frame's own overrides (from a regenerate) applied."""
        return self.config.model_copy(update={k: v for k, v in record.overrides.items() if v is not None})
