"""Job state in Redis: the spec (plan + config), frame records, variation records, status.

Keys (all expire after ``job_ttl_s``):
  framefleet:job:{id}:spec        JSON JobSpec, written once at submission (SET NX)
  framefleet:job:{id}:frames      hash frame name → JSON FrameRecord (compare-and-set updates)
  framefleet:job:{id}:variations  hash "{frame}/{revision}/{stage}/{index}" → JSON VariationRecord
  framefleet:job:{id}:scored      hash "{frame}/{revision}/{stage}" → JSON scoring result
  framefleet:job:{id}:stored:{frame}/{revision}/{stage}  zset variation index → when its image was stored
  framefleet:job:{id}:llm         hash "{frame}/{prompt digest}/{iteration}/{agent}" → a paid LLM reply
  framefleet:job:{id}:lease:{step}, :running   step leases (tasks/job/leases.py)
  framefleet:job:{id}:status      hash, the JobStatus fields (what a main app reads)
  framefleet:job:{id}:history     list of "stage: message" lines, in the order they happened
  framefleet:job:{id}:once:{step} markers that make "enqueue the next step" happen once
  framefleet:job:{id}:cost        hash "{frame}:{counter}" and "total:{counter}" → int
  framefleet:job:{id}:predictions hash "{variation key}#{attempt}" → Replicate prediction id
  framefleet:job:{id}:cancelled   the revision that was cancelled
  framefleet:job:{id}:committed   hash frame name → JSON FrameRecord as the last finished revision left
                                  it, for the frames the running revision changes (a cancel puts them back)
  framefleet:job:{id}:tasks       ids of the running revision's enqueued tasks (revoked on cancel)
  framefleet:job:{id}:finalized   set when finalize starts (late trace writes are dropped)
  framefleet:job:{id}:events      pub/sub channel: every status change as JSON (progress streams)
  framefleet:job:{id}:budget      committed estimated spend (float); :degradations list of notes
  framefleet:jobs:recent          zset job id → submitted time (framefleet jobs); trimmed to job_ttl_s
  framefleet:jobs:active          ids of jobs not finished yet (the watchdog's list)
  framefleet:jobs:parked          hash job id → why: jobs whose state could not be read or whose
                                  step kept dying; taken off the active list and reported (trimmed
                                  with framefleet:jobs:recent)
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Callable

import redis
from pydantic import BaseModel

from framefleet.tasks.job.redis import script, state_client
from framefleet.config.settings import get_settings
from framefleet.tasks.job.leases import Lease, running_key
from framefleet.tasks.job.plan import FramePlan
from framefleet.tasks.job.records import FrameRecord, JobEvent, JobStatus, VariationRecord
from framefleet.tasks.job.errors import JobExists, JobNotFound, RevisionRefused
from framefleet.tasks.job.requests import Callback, JobConfig

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
    callback: Callback | None = None

    def frame_config(self, record: FrameRecord) -> JobConfig:
        """The job's config with the frame's own overrides (from a regenerate) applied."""
        return self.config.model_copy(update={k: v for k, v in record.overrides.items() if v is not None})


class StaleWrite(Exception):
    """A step tried to write a frame record that has moved on since it read it."""


def _key(job_id: str, part: str) -> str:
    return f"framefleet:job:{job_id}:{part}"


ACTIVE_JOBS = "framefleet:jobs:active"
PARKED_JOBS = "framefleet:jobs:parked"
RECENT_JOBS = "framefleet:jobs:recent"


def events_channel(job_id: str) -> str:
    return _key(job_id, "events")


def recent_jobs(limit: int, client: redis.Redis | None = None) -> list[str]:
    """Job ids, newest first."""
    return (client or state_client()).zrevrange(RECENT_JOBS, 0, limit - 1)


def active_jobs(client: redis.Redis | None = None) -> set[str]:
    return (client or state_client()).smembers(ACTIVE_JOBS)


def active_job_ids(limit: int, client: redis.Redis | None = None) -> list[str]:
    """The newest ``limit`` jobs on the active list, newest first (by submission)."""
    client = client or state_client()
    active = list(client.smembers(ACTIVE_JOBS))
    submitted = client.zmscore(RECENT_JOBS, active) if active else []
    ordered = sorted(zip(active, submitted), key=lambda pair: -(pair[1] or 0))
    return [job_id for job_id, _ in ordered[:limit]]


def parked_jobs(client: redis.Redis | None = None) -> dict[str, str]:
    return (client or state_client()).hgetall(PARKED_JOBS)


class JobState:
    def __init__(self, job_id: str, client: redis.Redis | None = None):
        self.job_id = job_id
        self.r = client or state_client()
        self.ttl = get_settings().job_ttl_s

    # spec -------------------------------------------------------------------------------
    def create(self, spec: JobSpec) -> None:
        """Claim the job id (refused when known) and store the spec, frames and first status.

        The status stage is "creating" until ``created()``: a create that dies in between is seen
        by the watchdog and discarded, so its id is free again.
        """
        if not self.r.set(_key(self.job_id, "spec"), spec.model_dump_json(), nx=True, ex=self.ttl):
            raise JobExists(f"job_id: a job {self.job_id!r} already exists")
        frames = {f.name: FrameRecord(name=f.name, clip=f.clip, original_prompt=f.prompt).model_dump_json()
                  for f in spec.plan.frames}
        status = JobStatus(job_id=self.job_id, kind=spec.kind, frames_total=len(spec.plan.frames),
                           stage="creating", message="Queued", updated_at=time.time())
        pipe = self.r.pipeline()
        pipe.hset(_key(self.job_id, "frames"), mapping=frames)
        pipe.hset(_key(self.job_id, "status"), mapping=_flatten(status))
        for part in ("frames", "status"):
            pipe.expire(_key(self.job_id, part), self.ttl)
        pipe.sadd(ACTIVE_JOBS, self.job_id)
        pipe.zadd(RECENT_JOBS, {self.job_id: spec.submitted})
        pipe.zremrangebyscore(RECENT_JOBS, "-inf", spec.submitted - self.ttl)  # their state has expired
        pipe.expire(RECENT_JOBS, self.ttl)
        pipe.execute()

    def created(self) -> None:
        self.update_status(stage="queued")

    def discard(self) -> None:
        """Delete every key of the job (a create that failed half-way): the id is free again."""
        keys = [key for pattern in (f"framefleet:job:{self.job_id}:*", f"framefleet:replicate:job:{self.job_id}:*")
                for key in self.r.scan_iter(match=pattern, count=500)]
        pipe = self.r.pipeline()
        if keys:
            pipe.delete(*keys)
        pipe.srem(ACTIVE_JOBS, self.job_id)
        pipe.zrem(RECENT_JOBS, self.job_id)
        pipe.execute()

    def exists(self) -> bool:
        return bool(self.r.exists(_key(self.job_id, "spec")))

    def set_active(self, active: bool) -> None:
        (self.r.sadd if active else self.r.srem)(ACTIVE_JOBS, self.job_id)

    def park(self, why: str) -> None:
        """Take a job the fleet cannot run off the active list, and say why (framefleet jobs)."""
        parked = self.r.hkeys(PARKED_JOBS)
        gone = [job for job, known in zip(parked, self.r.zmscore(RECENT_JOBS, parked) if parked else []) if known is None]
        pipe = self.r.pipeline()
        if gone:  # jobs whose state has expired: nothing left to report
            pipe.hdel(PARKED_JOBS, *gone)
        pipe.hset(PARKED_JOBS, self.job_id, why)
        pipe.expire(PARKED_JOBS, self.ttl)
        pipe.srem(ACTIVE_JOBS, self.job_id)
        pipe.hset(_key(self.job_id, "status"), mapping=_flatten_fields(
            {"state": "done", "stage": "parked", "outcome": "failed", "message": f"Parked: {why}",
             "updated_at": time.time()}))
        pipe.execute()

    # leases and the end of the job --------------------------------------------------------
    def lease(self, step: str) -> Lease:
        return Lease(self.r, self.job_id, step, get_settings().lease_ttl_s, self.ttl)

    def mark_finalized(self) -> None:
        self.r.set(_key(self.job_id, "finalized"), "1", ex=self.ttl)

    def closed(self) -> bool:
        """Cancelled or finalizing: no more traces or paid work for this job."""
        return bool(self.r.exists(_key(self.job_id, "cancelled"), _key(self.job_id, "finalized")))

    # cancellation ------------------------------------------------------------------------
    def cancel(self, revision: int) -> None:
        """Flag ``revision`` cancelled: its steps stop at their next check. A later revision (only
        possible when the cancelled one was not the first) clears the flag when it starts."""
        self.r.set(_key(self.job_id, "cancelled"), revision, ex=self.ttl)

    def cancelled(self) -> bool:
        return bool(self.r.exists(_key(self.job_id, "cancelled")))

    def add_task_ids(self, ids: list[str]) -> None:
        name = _key(self.job_id, "tasks")
        self._write_if_alive(("SADD", name, *ids), ("EXPIRE", name, self.ttl))

    def _write_if_alive(self, *commands: tuple) -> bool:
        """Run ``commands`` atomically, only while the job exists: a step that outlived its job
        (expired, discarded, or Redis wiped under it) recreates none of its keys."""
        args: list = []
        for command in commands:
            args += [len(command), *command]
        return bool(script(self.r, "write_if_alive")(keys=[_key(self.job_id, "spec")], args=args))

    def task_ids(self) -> set[str]:
        return self.r.smembers(_key(self.job_id, "tasks"))

    def forget_task_ids(self) -> None:
        self.r.delete(_key(self.job_id, "tasks"))

    def spec(self) -> JobSpec:
        raw = self.r.get(_key(self.job_id, "spec"))
        if raw is None:
            raise JobNotFound(f"job_id: no job {self.job_id!r}")
        return JobSpec.model_validate_json(raw)

    # frames -----------------------------------------------------------------------------
    def frame(self, name: str) -> FrameRecord:
        raw = self.r.hget(_key(self.job_id, "frames"), name)
        if raw is None:
            raise JobNotFound(f"job_id: no job {self.job_id!r} with a frame {name!r}")
        return FrameRecord.model_validate_json(raw)

    def frames(self) -> dict[str, FrameRecord]:
        raw = self.r.hgetall(_key(self.job_id, "frames"))
        return {name: FrameRecord.model_validate_json(value) for name, value in raw.items()}

    def update_frame(self, name: str, change: Callable[[FrameRecord], None], keep_committed: bool = False) -> FrameRecord:
        """Read-change-write one frame record atomically (WATCH/MULTI, retried on a conflict).

        ``change`` edits the record in place and raises StaleWrite when the record has moved on
        (e.g. it is already selected), so a late duplicate step can never write an old state back.
        ``keep_committed``: a revision is about to change the frame; keep the record as the last
        finished revision left it, so a cancel or failure of this revision can put it back.
        """
        key = _key(self.job_id, "frames")

        def transaction(pipe: redis.client.Pipeline) -> FrameRecord:
            raw = pipe.hget(key, name)
            if raw is None:
                raise JobNotFound(f"job_id: no job {self.job_id!r}")
            record = FrameRecord.model_validate_json(raw)
            change(record)
            pipe.multi()
            pipe.hset(key, name, record.model_dump_json())
            if keep_committed:
                pipe.hsetnx(_key(self.job_id, "committed"), name, raw)
                pipe.expire(_key(self.job_id, "committed"), self.ttl)
            return record

        return self.r.transaction(transaction, key, value_from_callable=True)

    # variations and scoring results, per frame revision -------------------------------------
    def variation(self, frame: str, revision: int, stage: str, index: int) -> VariationRecord | None:
        raw = self.r.hget(_key(self.job_id, "variations"), f"{frame}/{revision}/{stage}/{index}")
        return VariationRecord.model_validate_json(raw) if raw else None

    def save_variation(self, frame: str, revision: int, stage: str, record: VariationRecord) -> None:
        name = _key(self.job_id, "variations")
        commands = [("HSET", name, f"{frame}/{revision}/{stage}/{record.index}", record.model_dump_json()),
                    ("EXPIRE", name, self.ttl)]
        if record.key:  # the straggler cut counts stored images
            stored = _key(self.job_id, f"stored:{frame}/{revision}/{stage}")
            commands += [("ZADD", stored, time.time(), str(record.index)), ("EXPIRE", stored, self.ttl)]
        self._write_if_alive(*commands)

    def count_round(self, wake: int) -> None:
        """One more generation round of the job was enqueued: count it and wake up to ``wake``
        variations holding their slots for it (tasks/coordination/slot_hold.py)."""
        pipe = self.r.pipeline()
        pipe.incr(_key(self.job_id, "rounds"))
        pipe.expire(_key(self.job_id, "rounds"), self.ttl)
        rounds = pipe.execute()[0]
        woken = self.round_wake_key(rounds)
        pipe.rpush(woken, *["1"] * wake)
        pipe.expire(woken, 60)  # holds last seconds at most; later ones see the count instead
        pipe.execute()

    def round_wake_key(self, rounds: int) -> str:
        return _key(self.job_id, f"round-wake:{rounds}")

    def rounds_enqueued(self) -> int:
        return int(self.r.get(_key(self.job_id, "rounds")) or 0)

    def hold_view(self, frame: str, revision: int, stage: str, count: int) -> tuple[int, int, int, bool]:
        """What a slot hold polls, in one round trip: rounds enqueued, how many of the round's
        ``count`` variations are recorded (stored or failed), how many are neither recorded nor
        running (no lease: waiting for a slot, or for a retry), and whether the job is closed."""
        steps = [f"{frame}/{revision}/{stage}/{i}" for i in range(1, count + 1)]
        pipe = self.r.pipeline(transaction=False)
        pipe.get(_key(self.job_id, "rounds"))
        pipe.hmget(_key(self.job_id, "variations"), steps)
        pipe.hmget(running_key(self.job_id), [f"generate:{step}" for step in steps])
        pipe.exists(_key(self.job_id, "cancelled"), _key(self.job_id, "finalized"))
        rounds, recorded, running, closed = pipe.execute()
        unstarted = sum(r is None and g is None for r, g in zip(recorded, running))
        return int(rounds or 0), sum(r is not None for r in recorded), unstarted, bool(closed)

    def stored_times(self, frame: str, revision: int, stage: str) -> list[float]:
        """When each stored variation of a frame's round was stored, earliest first."""
        pairs = self.r.zrange(_key(self.job_id, f"stored:{frame}/{revision}/{stage}"), 0, -1, withscores=True)
        return [when for _, when in pairs]

    def scored(self, frame: str, revision: int, stage: str) -> dict | None:
        raw = self.r.hget(_key(self.job_id, "scored"), f"{frame}/{revision}/{stage}")
        return json.loads(raw) if raw else None

    def save_scored(self, frame: str, revision: int, stage: str, result: dict) -> None:
        name = _key(self.job_id, "scored")
        self._write_if_alive(("HSET", name, f"{frame}/{revision}/{stage}", json.dumps(result)),
                             ("EXPIRE", name, self.ttl))

    # LLM ledger: a redelivered enhancement replays the rounds already paid for ----------------
    def llm_reply(self, frame: str, prompt: str, iteration: int, agent: str) -> str | None:
        return self.r.hget(_key(self.job_id, "llm"), _llm_field(frame, prompt, iteration, agent))

    def save_llm_reply(self, frame: str, prompt: str, iteration: int, agent: str, reply: str) -> None:
        name = _key(self.job_id, "llm")
        self._write_if_alive(("HSET", name, _llm_field(frame, prompt, iteration, agent), reply),
                             ("EXPIRE", name, self.ttl))

    # once-only steps --------------------------------------------------------------------
    def claim(self, step: str) -> bool:
        """True for the first caller only: a redelivered task must not enqueue a step twice."""
        return bool(self.r.set(_key(self.job_id, f"once:{step}"), "1", nx=True, ex=self.ttl))

    def unclaim(self, step: str) -> None:
        """Give a claim back when what it guarded could not be done (e.g. the send failed)."""
        self.r.delete(_key(self.job_id, f"once:{step}"))

    # cost ledger ------------------------------------------------------------------------
    def add_costs(self, frame: str, **counts: int) -> None:
        name = _key(self.job_id, "cost")
        commands = []
        for counter, value in counts.items():
            commands += [("HINCRBY", name, f"{frame}:{counter}", value), ("HINCRBY", name, f"total:{counter}", value)]
        self._write_if_alive(*commands, ("EXPIRE", name, self.ttl))

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
        self._write_if_alive(("RPUSH", name, json.dumps({"ledger_key": ledger_key, "time": time.time()})),
                             ("EXPIRE", name, self.ttl))

    def offline_calls(self) -> list[dict]:
        return [json.loads(line) for line in self.r.lrange(_key(self.job_id, "offline_calls"), 0, -1)]

    # status -----------------------------------------------------------------------------
    @staticmethod
    def statuses(job_ids: list[str], client: redis.Redis | None = None) -> list[dict | None]:
        """The raw status fields of several jobs in one round trip (None: no such job)."""
        pipe = (client or state_client()).pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(_key(job_id, "status"))
        return [{k: (None if v == "" else v) for k, v in raw.items()} or None for raw in pipe.execute()]

    def status(self) -> JobStatus:
        raw = self.r.hgetall(_key(self.job_id, "status"))
        if not raw:
            raise JobNotFound(f"job_id: no job {self.job_id!r}")
        return JobStatus.model_validate({k: (None if v == "" else v) for k, v in raw.items()})

    def update_status(self, progress: bool = False, active: bool | None = None, **fields) -> None:
        """Write status fields, append the message to the history, and publish the change on the
        job's events channel (a JobEvent as JSON). Nothing is written for a job that is gone.

        ``progress``: a step's progress report, dropped once the job is done (a late duplicate
        must not flip a finished job back to running); its ``percent`` never lowers the stored one.
        ``active``: put the job on (True) or take it off (False) the watchdog's active list in the
        same transaction, so nobody sees a finished job still active or a running one inactive.
        """
        fields["updated_at"] = time.time()
        history = f"{fields.get('stage', '')}: {fields['message']}" if "message" in fields else ""
        flat = [part for item in _flatten_fields(fields).items() for part in item]
        current = script(self.r, "write_status")(
            keys=[_key(self.job_id, "status"), _key(self.job_id, "history"), ACTIVE_JOBS],
            args=["1" if progress else "0", history, {None: "", True: "add", False: "rem"}[active], self.job_id,
                  self.ttl, *flat])
        if not current:
            return
        state, stage, message, percent, frame, revision = current
        event = JobEvent(state=state or "queued", stage=stage or "", message=message or "", percent=float(percent or 0),
                         frame=frame or None, revision=int(revision or 0))
        self.r.publish(events_channel(self.job_id), event.model_dump_json())

    def start_revision(self) -> int:
        """Open the next revision of a finished job (choose, regenerate); refused while it runs."""
        key = _key(self.job_id, "status")

        def transaction(pipe: redis.client.Pipeline) -> int:
            state, current, outcome = pipe.hmget(key, ["state", "revision", "outcome"])
            if state is None:
                raise JobNotFound(f"job_id: no job {self.job_id!r}")
            if state != "done":
                raise _still_running(self.job_id, current)
            if pipe.get(_key(self.job_id, "cancelled")) == "0":
                raise _first_run_cancelled(self.job_id)
            revision = int(current or 0) + 1
            pipe.multi()
            pipe.hset(key, mapping=_flatten_fields({"state": "running", "stage": "queued", "outcome": None,
                                                    "revision": revision, "percent": 0.0}))
            pipe.delete(*(_key(self.job_id, part) for part in ("finalized", "cancelled", "committed", "tasks")))
            pipe.hset(_key(self.job_id, "committed"), COMMITTED_OUTCOME, outcome or "")
            pipe.sadd(ACTIVE_JOBS, self.job_id)
            for part in LASTING_PARTS:  # keys written at the first run must outlive this revision too
                pipe.expire(_key(self.job_id, part), self.ttl)
            return revision

        revision = self.r.transaction(transaction, key, value_from_callable=True)
        self.update_status(message=f"Revision {revision}")
        return revision

    def refuse_while_running(self) -> None:
        state, revision = self.r.hmget(_key(self.job_id, "status"), ["state", "revision"])
        if state is None:
            raise JobNotFound(f"job_id: no job {self.job_id!r}")
        if state != "done":
            raise _still_running(self.job_id, revision)
        if self.r.get(_key(self.job_id, "cancelled")) == "0":
            raise _first_run_cancelled(self.job_id)

    def restore_committed(self, frame: str | None = None) -> tuple[list[str], str | None]:
        """Put back the frames the running revision changed (or only ``frame``), as the last
        finished revision left them. Returns the frames put back and that revision's outcome."""
        committed = self.r.hgetall(_key(self.job_id, "committed"))
        outcome = committed.pop(COMMITTED_OUTCOME, None) or None
        records = {name: raw for name, raw in committed.items() if frame is None or name == frame}
        if records:
            self.r.hset(_key(self.job_id, "frames"), mapping=records)
        return sorted(records), outcome

    def commit_revision(self) -> None:
        """The running revision finished: its frames are the committed ones from now on."""
        self.r.delete(_key(self.job_id, "committed"))

    def revision(self) -> int:
        return int(self.r.hget(_key(self.job_id, "status"), "revision") or 0)

    # budget: estimated spend reserved before each paid call (tasks/coordination/budget.py) ------------------
    def reserve_spend(self, script, cap: float, amount: float, keep_free: float = 0.0) -> bool:
        return bool(script(keys=[_key(self.job_id, "budget")], args=[cap, amount, keep_free, self.ttl]))

    def committed_spend(self) -> float:
        return float(self.r.get(_key(self.job_id, "budget")) or 0.0)

    def add_degradation(self, note: str) -> None:
        name = _key(self.job_id, "degradations")
        self._write_if_alive(("RPUSH", name, note), ("EXPIRE", name, self.ttl))

    def degradations(self) -> list[str]:
        return self.r.lrange(_key(self.job_id, "degradations"), 0, -1)

    def count_redrives(self, steps: int) -> None:
        self.r.hincrby(_key(self.job_id, "status"), "redrives", steps)

    def history(self) -> list[str]:
        return self.r.lrange(_key(self.job_id, "history"), 0, -1)

    def prompt_enhanced(self, kind: str, frames_total: int) -> None:
        enhanced = self.r.hincrby(_key(self.job_id, "status"), "prompts_enhanced", 1)
        self.update_status(progress=True, state="running", stage="enhance", message=STAGE_MESSAGES[kind]["enhance"],
                           percent=round(ENHANCE_SHARE * min(enhanced, frames_total) / frames_total, 1))

    def frame_stage(self, kind: str, stage: str, frame: str, frames_done: int, frames_total: int) -> None:
        self.update_status(progress=True, state="running", stage=stage, message=STAGE_MESSAGES[kind][stage],
                           current_frame=frame,
                           frames_done=frames_done,
                           percent=round(ENHANCE_SHARE + FRAMES_SHARE * frames_done / frames_total, 1))


# The keys a job keeps for its whole life (the rest belong to one revision or one step).
LASTING_PARTS = ("spec", "frames", "status", "history", "variations", "scored", "llm", "cost", "predictions",
                 "budget", "degradations", "rounds", "running", "redrives", "offline_calls")
COMMITTED_OUTCOME = ":outcome"  # in the committed hash beside the frames (frame names have no ':')


def _first_run_cancelled(job_id: str) -> RevisionRefused:
    return RevisionRefused(f"job_id: job {job_id!r} was cancelled before it first finished; submit a new job")


def _still_running(job_id: str, revision: str | None) -> RevisionRefused:
    return RevisionRefused(f"job_id: job {job_id!r} is still running revision {revision or 0}; "
                           "choose or regenerate once it is done")


def _llm_field(frame: str, prompt: str, iteration: int, agent: str) -> str:
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]  # a new prompt is a new conversation
    return f"{frame}/{digest}/{iteration}/{agent}"


def _flatten_fields(fields: dict) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in fields.items()}


def _flatten(model: BaseModel) -> dict[str, str]:
    return _flatten_fields(model.model_dump())
