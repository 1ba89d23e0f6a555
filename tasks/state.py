"""Job state in Redis: the spec (plan + config), frame records, variation records, status.

Keys (all expire after ``job_ttl_s``):
  framefleet:job:{id}:spec        JSON JobSpec, written once at submission (SET NX)
  framefleet:job:{id}:frames      hash frame name → JSON FrameRecord
  framefleet:job:{id}:variations  hash "{frame}/{stage}/{index}" → JSON VariationRecord
  framefleet:job:{id}:status      hash, the JobStatus fields (what a main app reads)
  framefleet:job:{id}:history     list of "stage: message" lines, in the order they happened
  framefleet:job:{id}:once:{step} markers that make "enqueue the next step" happen once
  framefleet:job:{id}:cost        hash "{frame}:{counter}" and "total:{counter}" → int
  framefleet:job:{id}:predictions hash "{variation key}#{attempt}" → Replicate prediction id
  framefleet:job:{id}:cancelled   set when the job is cancelled
  framefleet:job:{id}:tasks       ids of the job's enqueued tasks (revoked on cancel)
  framefleet:jobs:active          ids of jobs not finished yet (the watchdog's list)
"""

from __future__ import annotations

import json
import time
from functools import lru_cache

import redis
from pydantic import BaseModel
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from config.settings import get_settings
from tasks.plan import FramePlan
from tasks.records import FrameRecord, JobStatus, VariationRecord
from tasks.requests import JobConfig

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


class JobSpec(BaseModel):
    job_id: str
    kind: str
    aspect_ratio: str
    config: JobConfig
    plan: FramePlan
    providers: dict[str, str]
    submitted: float


class JobExists(Exception):
    pass


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    # Ride out a Redis restart (a few seconds) instead of failing the task that noticed it.
    retry = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=8)
    return redis.Redis.from_url(url, decode_responses=True, retry=retry, health_check_interval=15,
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def state_client() -> redis.Redis:
    url = get_settings().state_url
    if not url:
        raise RuntimeError("FRAMEFLEET_BROKER_URL (or FRAMEFLEET_STATE_REDIS_URL) is not set")
    return _client(url)


def _key(job_id: str, part: str) -> str:
    return f"framefleet:job:{job_id}:{part}"


ACTIVE_JOBS = "framefleet:jobs:active"


def active_jobs(client: redis.Redis | None = None) -> set[str]:
    return (client or state_client()).smembers(ACTIVE_JOBS)


class JobState:
    def __init__(self, job_id: str, client: redis.Redis | None = None):
        self.job_id = job_id
        self.r = client or state_client()
        self.ttl = get_settings().job_ttl_s

    # spec -------------------------------------------------------------------------------
    def create(self, spec: JobSpec) -> None:
        """Store the spec and the first status; refuse a job id that is already known."""
        if not self.r.set(_key(self.job_id, "spec"), spec.model_dump_json(), nx=True, ex=self.ttl):
            raise JobExists(f"job_id: a job {self.job_id!r} already exists")
        frames = {f.name: FrameRecord(name=f.name, clip=f.clip, original_prompt=f.prompt).model_dump_json()
                  for f in spec.plan.frames}
        status = JobStatus(job_id=self.job_id, kind=spec.kind, frames_total=len(spec.plan.frames),
                           message="Queued", updated_at=time.time())
        pipe = self.r.pipeline()
        pipe.hset(_key(self.job_id, "frames"), mapping=frames)
        pipe.hset(_key(self.job_id, "status"), mapping=_flatten(status))
        for part in ("frames", "status"):
            pipe.expire(_key(self.job_id, part), self.ttl)
        pipe.execute()

    def exists(self) -> bool:
        return bool(self.r.exists(_key(self.job_id, "spec")))

    def set_active(self, active: bool) -> None:
        (self.r.sadd if active else self.r.srem)(ACTIVE_JOBS, self.job_id)

    # cancellation ------------------------------------------------------------------------
    def cancel(self) -> None:
        self.r.set(_key(self.job_id, "cancelled"), "1", ex=self.ttl)

    def cancelled(self) -> bool:
        return bool(self.r.exists(_key(self.job_id, "cancelled")))

    def add_task_ids(self, ids: list[str]) -> None:
        name = _key(self.job_id, "tasks")
        self.r.sadd(name, *ids)
        self.r.expire(name, self.ttl)

    def task_ids(self) -> set[str]:
        return self.r.smembers(_key(self.job_id, "tasks"))

    def spec(self) -> JobSpec:
        raw = self.r.get(_key(self.job_id, "spec"))
        if raw is None:
            raise KeyError(f"job_id: no job {self.job_id!r}")
        return JobSpec.model_validate_json(raw)

    # frames -----------------------------------------------------------------------------
    def frame(self, name: str) -> FrameRecord:
        return FrameRecord.model_validate_json(self.r.hget(_key(self.job_id, "frames"), name))

    def frames(self) -> dict[str, FrameRecord]:
        raw = self.r.hgetall(_key(self.job_id, "frames"))
        return {name: FrameRecord.model_validate_json(value) for name, value in raw.items()}

    def save_frame(self, record: FrameRecord) -> None:
        # Each step owns a frame at a time (enhance, then select), so a plain write is race-free.
        self.r.hset(_key(self.job_id, "frames"), record.name, record.model_dump_json())

    def selections(self) -> dict[str, str]:
        return {name: f.selected.frame_key for name, f in self.frames().items() if f.selected is not None}

    # variations -------------------------------------------------------------------------
    def variation(self, frame: str, stage: str, index: int) -> VariationRecord | None:
        raw = self.r.hget(_key(self.job_id, "variations"), f"{frame}/{stage}/{index}")
        return VariationRecord.model_validate_json(raw) if raw else None

    def save_variation(self, frame: str, stage: str, record: VariationRecord) -> None:
        name = _key(self.job_id, "variations")
        self.r.hset(name, f"{frame}/{stage}/{record.index}", record.model_dump_json())
        self.r.expire(name, self.ttl)

    # once-only steps --------------------------------------------------------------------
    def claim(self, step: str) -> bool:
        """True for the first caller only: a redelivered task must not enqueue a step twice."""
        return bool(self.r.set(_key(self.job_id, f"once:{step}"), "1", nx=True, ex=self.ttl))

    # cost ledger ------------------------------------------------------------------------
    def add_costs(self, frame: str, **counts: int) -> None:
        name = _key(self.job_id, "cost")
        pipe = self.r.pipeline()
        for counter, value in counts.items():
            pipe.hincrby(name, f"{frame}:{counter}", value)
            pipe.hincrby(name, f"total:{counter}", value)
        pipe.expire(name, self.ttl)
        pipe.execute()

    def costs(self) -> dict[str, dict[str, int]]:
        """{frame or "total": {counter: value}}."""
        out: dict[str, dict[str, int]] = {}
        for field, value in self.r.hgetall(_key(self.job_id, "cost")).items():
            owner, counter = field.rsplit(":", 1)
            out.setdefault(owner, {})[counter] = int(value)
        return out

    # paid predictions ---------------------------------------------------------------------
    def prediction_id(self, ledger_key: str) -> str | None:
        return self.r.hget(_key(self.job_id, "predictions"), ledger_key)

    def record_prediction(self, ledger_key: str, prediction_id: str) -> str:
        """Record a prediction id; returns the id already recorded if another delivery won."""
        name = _key(self.job_id, "predictions")
        if self.r.hsetnx(name, ledger_key, prediction_id):
            self.r.expire(name, self.ttl)
            return prediction_id
        return self.r.hget(name, ledger_key)

    def predictions(self) -> dict[str, str]:
        return self.r.hgetall(_key(self.job_id, "predictions"))

    def log_offline_call(self, ledger_key: str | None) -> None:
        name = _key(self.job_id, "offline_calls")
        self.r.rpush(name, json.dumps({"ledger_key": ledger_key, "time": time.time()}))
        self.r.expire(name, self.ttl)

    def offline_calls(self) -> list[dict]:
        return [json.loads(line) for line in self.r.lrange(_key(self.job_id, "offline_calls"), 0, -1)]

    # status -----------------------------------------------------------------------------
    def status(self) -> JobStatus:
        raw = self.r.hgetall(_key(self.job_id, "status"))
        if not raw:
            raise KeyError(f"job_id: no job {self.job_id!r}")
        return JobStatus.model_validate({k: (None if v == "" else v) for k, v in raw.items()})

    def update_status(self, **fields) -> None:
        fields["updated_at"] = time.time()
        pipe = self.r.pipeline()
        pipe.hset(_key(self.job_id, "status"), mapping=_flatten_fields(fields))
        if "message" in fields:
            pipe.rpush(_key(self.job_id, "history"), f"{fields.get('stage', '')}: {fields['message']}")
            pipe.expire(_key(self.job_id, "history"), self.ttl)
        pipe.execute()

    def history(self) -> list[str]:
        return self.r.lrange(_key(self.job_id, "history"), 0, -1)

    def prompt_enhanced(self, kind: str, frames_total: int) -> None:
        enhanced = self.r.hincrby(_key(self.job_id, "status"), "prompts_enhanced", 1)
        self.update_status(state="running", stage="enhance", message=STAGE_MESSAGES[kind]["enhance"],
                           percent=round(ENHANCE_SHARE * enhanced / frames_total, 1))

    def frame_stage(self, kind: str, stage: str, frame: str, frames_done: int, frames_total: int) -> None:
        self.update_status(state="running", stage=stage, message=STAGE_MESSAGES[kind][stage], current_frame=frame,
                           frames_done=frames_done,
                           percent=round(ENHANCE_SHARE + FRAMES_SHARE * frames_done / frames_total, 1))


def _flatten_fields(fields: dict) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in fields.items()}


def _flatten(model: BaseModel) -> dict[str, str]:
    return _flatten_fields(model.model_dump())
