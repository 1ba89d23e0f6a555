"""One job in Redis: its spec and lifecycle here, each other concern in a module of its own.

``Job(job_id)`` is the only way the fleet reads or changes a job. Its parts:

  job.frames     the frame records, their views and their state machine (job/frames.py)
  job.progress   the status record, its events and history (job/progress.py)
  job.rounds     generation rounds: variation and scoring records, the round counter (job/rounds.py)
  job.ledger     what was paid for: costs, LLM replies, predictions, task ids (job/ledgers.py)
  job.leases     step leases and once-only claims (job/leases.py)
  job.budget     the spending cap's reservations (job/budget.py)

Every key is in job/keys.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from framefleet.config.settings import MAX_VARIATIONS, get_settings
from framefleet.tasks.job import metrics
from framefleet.tasks.job.budget import BudgetStore
from framefleet.tasks.job.errors import JobExists, JobNotFound, RevisionRefused
from framefleet.tasks.job.frames import Frames, FrameView, FrameViews
from framefleet.tasks.job.keys import (
    ACTIVE_JOBS,
    ANCHOR,
    CREATING_JOBS,
    FLEET_METRICS,
    JOB_STATE_COUNTS,
    PARKED_JOBS,
    RECENT_JOBS,
    JobKeys,
)
from framefleet.tasks.job.leases import Leases
from framefleet.tasks.job.ledgers import Ledger
from framefleet.tasks.job.progress import Progress, flatten
from framefleet.tasks.job.records import FrameRecord, JobStatus
from framefleet.tasks.job.redis import Prefetch, chain, packed, script_then_reads, state_client
from framefleet.tasks.job.rounds import WAKE_TTL_S, Rounds
from framefleet.tasks.job.spec import JobSpec
from framefleet.tasks.job.states import UNFINISHED, JobState


class Job:
    def __init__(self, job_id: str, client: redis.Redis | None = None):
        self.id = job_id
        self.r = client or state_client()
        self.keys = JobKeys(job_id)
        self.ttl = get_settings().job_ttl_s
        self.frames = Frames(self)
        self.progress = Progress(self)
        self.rounds = Rounds(self)
        self.ledger = Ledger(self)
        self.leases = Leases(self)
        self.budget = BudgetStore(self)
        self._spec: JobSpec | None = None
        # What the step's caller reads right after its outcome is stored, read in the round trip
        # that stores it (``write_if_alive(outcome=True)``).
        self.after_outcome: Prefetch | None = None
        self.finished_outcome: str | None = None  # the outcome of the revision before the one started here

    # the spec: written once at create, read once per Job ---------------------------------------
    @property
    def spec(self) -> JobSpec:
        if self._spec is None:
            self._keep_spec(self.r.get(self.keys.spec))
        return self._spec

    def _keep_spec(self, raw: str | None) -> None:
        if raw is None:
            raise JobNotFound(f"job_id: no job {self.id!r}")
        self._spec = JobSpec.model_validate_json(raw)

    def prefetch_spec(self) -> Prefetch:
        """The spec, read ahead."""
        def keep(replies: list) -> None:
            if replies:
                self._keep_spec(replies[0])

        return Prefetch(self._spec_read(), keep)

    def prefetch_spec_and_frame(self, name: str) -> Prefetch:
        """``spec_and_frame(name)``, read ahead."""
        def keep(replies: list) -> None:
            *spec, frame = replies
            if spec:
                self._keep_spec(spec[0])
            self.frames.prime(name, frame)

        return Prefetch((*self._spec_read(), self.frames.read_command(name)), keep)

    def prefetch_spec_frame_and_views(self, name: str) -> Prefetch:
        """``spec_and_views()`` and frame ``name``'s record (``frames.get``), read ahead."""
        def keep(replies: list) -> None:
            *spec, frame, views = replies
            if spec:
                self._keep_spec(spec[0])
            self.frames.prime(name, frame)
            self.frames.prime_views(views)

        return Prefetch((*self._spec_read(), self.frames.read_command(name), self.frames.views_read()), keep)

    def _spec_read(self) -> tuple[tuple, ...]:
        return () if self._spec is not None else (("GET", self.keys.spec),)

    def spec_and_frame(self, name: str) -> tuple[JobSpec, FrameRecord]:
        """The spec and frame ``name``'s record, in one round trip when the spec is not read yet."""
        if self._spec is not None:
            return self._spec, self.frames.get(name)
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.keys.spec)
        pipe.execute_command(*self.frames.read_command(name))
        raw, reply = pipe.execute()
        self._keep_spec(raw)
        return self._spec, self.frames.parse(name, reply)

    def spec_and_views(self) -> tuple[JobSpec, FrameViews]:
        """The spec and every frame's view (``frames.views``), in one round trip when the spec is not
        read yet."""
        if self._spec is not None:
            return self._spec, self.frames.views()
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.keys.spec)
        pipe.execute_command(*self.frames.views_read())
        raw, views = pipe.execute()
        self._keep_spec(raw)
        return self._spec, self.frames.parse_views(views)

    def frames_while_open(self) -> FrameViews | None:
        """Every frame's view (``frames.views``), or None once the job is closed, in one round trip,
        or none where this Job's last transition read them right after its write (``read_after``)."""
        seen = self.frames.read_after_transition()
        if seen is None:
            pipe = self.r.pipeline(transaction=False)
            pipe.exists(self.keys.cancelled, self.keys.finalized)
            pipe.execute_command(*self.frames.views_read())
            seen = (*pipe.execute(), {})
        closed, raw, records = seen
        return None if closed else self.frames.parse_views(raw, records)

    def exists(self) -> bool:
        return bool(self.r.exists(self.keys.spec))

    # lifecycle ----------------------------------------------------------------------------
    def create(self, spec: JobSpec) -> None:
        """Claim the job id (refused when known) and store the spec, frames and first status.

        The status stage is "creating" until ``created()``: a create that dies in between is seen
        by the watchdog and discarded, so its id is free again.
        """
        if not self.r.set(self.keys.spec, spec.model_dump_json(), nx=True, ex=self.ttl):
            raise JobExists(f"job_id: a job {self.id!r} already exists")
        self._spec = spec
        records = {f.name: FrameRecord(name=f.name, clip=f.clip, original_prompt=f.prompt) for f in spec.plan.frames}
        status = JobStatus(job_id=self.id, kind=spec.kind, frames_total=len(spec.plan.frames), stage="creating",
                           message="Queued", updated_at=time.time())
        pipe = self.r.pipeline()
        pipe.hset(self.keys.frames, mapping={name: record.model_dump_json() for name, record in records.items()})
        pipe.hset(self.keys.views, mapping={name: FrameView.of(record).dump() for name, record in records.items()})
        pipe.hset(self.keys.status, mapping=flatten(status.model_dump()))
        for key in self.keys.anchored():  # written per step: created now, so no write sets an expiry
            pipe.hset(key, ANCHOR, "")
        for key in (self.keys.frames, self.keys.views, self.keys.status, *self.keys.anchored()):
            pipe.expire(key, self.ttl)
        pipe.sadd(ACTIVE_JOBS, self.id)
        pipe.hincrby(JOB_STATE_COUNTS, status.state, 1)
        pipe.zadd(CREATING_JOBS, {self.id: spec.submitted})
        pipe.zadd(RECENT_JOBS, {self.id: spec.submitted})
        pipe.zremrangebyscore(RECENT_JOBS, "-inf", spec.submitted - self.ttl)  # their state has expired
        pipe.expire(RECENT_JOBS, self.ttl)
        pipe.execute()

    def created(self) -> None:
        self.progress.write(JobState.QUEUED, stage="queued")
        self.r.zrem(CREATING_JOBS, self.id)

    def discard(self) -> None:
        """Delete every key of the job (a create that failed half-way): the id is free again."""
        keys = [key for pattern in self.keys.patterns() for key in self.r.scan_iter(match=pattern, count=500)]
        state = self.r.hget(self.keys.status, "state")
        pipe = self.r.pipeline()
        if state in UNFINISHED:
            pipe.hincrby(JOB_STATE_COUNTS, state, -1)
        if keys:
            pipe.delete(*keys)
        pipe.srem(ACTIVE_JOBS, self.id)
        pipe.zrem(RECENT_JOBS, self.id)
        pipe.zrem(CREATING_JOBS, self.id)
        pipe.execute()

    def park(self, why: str) -> None:
        """Take a job the fleet cannot run off the active list, and say why (framefleet jobs)."""
        parked = self.r.hkeys(PARKED_JOBS)
        known = self.r.zmscore(RECENT_JOBS, parked) if parked else []
        gone = [job for job, submitted in zip(parked, known) if submitted is None]

        def transaction(pipe: redis.client.Pipeline) -> None:
            state = pipe.hget(self.keys.status, "state")  # its count by state moves with it, once
            pipe.multi()
            if gone:  # jobs whose state has expired: nothing left to report
                pipe.hdel(PARKED_JOBS, *gone)
            pipe.hset(PARKED_JOBS, self.id, why)
            pipe.expire(PARKED_JOBS, self.ttl)
            pipe.srem(ACTIVE_JOBS, self.id)
            pipe.hset(self.keys.status, mapping=flatten({"state": "done", "stage": "parked", "outcome": "failed",
                                                         "message": f"Parked: {why}", "updated_at": time.time()}))
            if state in UNFINISHED:
                pipe.hincrby(JOB_STATE_COUNTS, state, -1)
                pipe.hincrbyfloat(FLEET_METRICS, metrics.field("jobs_finished_total", status="parked"), 1)

        self.r.transaction(transaction, self.keys.status)

    def set_active(self, active: bool = True) -> None:
        (self.r.sadd if active else self.r.srem)(ACTIVE_JOBS, self.id)

    # revisions ----------------------------------------------------------------------------
    def revision(self) -> int:
        return int(self.r.execute_command(*self.revision_read()) or 0)

    def revision_read(self) -> tuple:
        """The Redis read of the running revision (its reply: None for revision 0, else the number)."""
        return ("HGET", self.keys.status, "revision")

    def refuse_while_running(self) -> None:
        state, revision = self.r.hmget(self.keys.status, ["state", "revision"])
        if state is None:
            raise JobNotFound(f"job_id: no job {self.id!r}")
        if state != JobState.DONE:
            raise _still_running(self.id, revision)
        if self.r.get(self.keys.cancelled) == "0":
            raise _first_run_cancelled(self.id)

    def start_revision(self) -> int:
        """Open the next revision of a finished job (choose, regenerate): one transaction checks
        that the job is done and takes the revision, so of two requests at once one is refused
        before it writes anything. Renews the expiry of every key the job keeps."""
        def transaction(pipe: redis.client.Pipeline) -> int:
            state, current, self.finished_outcome = pipe.hmget(self.keys.status, ["state", "revision", "outcome"])
            if state is None:
                raise JobNotFound(f"job_id: no job {self.id!r}")
            if state != JobState.DONE:
                raise _still_running(self.id, current)
            if pipe.get(self.keys.cancelled) == "0":
                raise _first_run_cancelled(self.id)
            revision = int(current or 0) + 1
            pipe.multi()
            pipe.hset(self.keys.status, mapping=flatten({"state": JobState.RUNNING, "stage": "queued", "outcome": None,
                                                         "revision": revision, "percent": 0.0}))
            pipe.delete(self.keys.finalized, self.keys.cancelled, self.keys.tasks)
            pipe.sadd(ACTIVE_JOBS, self.id)
            pipe.hincrby(JOB_STATE_COUNTS, JobState.RUNNING, 1)
            for key in self.keys.lasting():  # keys written at the first run must outlive this revision too
                pipe.expire(key, self.ttl)
            return revision

        revision = self.r.transaction(transaction, self.keys.status, value_from_callable=True)
        self.progress.write(message=f"Revision {revision}")
        return revision

    def abandon_revision(self, message: str, outcome: str | None) -> list[str]:
        """End the running revision without its changes: the draft goes, the frames are the last
        finished revision's; returns the frames it had changed."""
        changed, _ = chain(self.frames.end_revision_call(keep=False), self.progress.write_call(
            JobState.DONE, stage="done", outcome=outcome, percent=100.0, active=False, message=message)).run(self.r)
        return changed

    def finish(self, outcome: str, frames_done: int, manifest_key: str, revision: int) -> None:
        """The running revision is finished: its frames become the job's and the job is done, in
        one script. The first run counts as a finished job (metrics), once, as the job enters
        ``done``."""
        finished = {} if revision else metrics.merged(
            {metrics.field("jobs_finished_total", status=outcome): 1},
            metrics.observation("job_duration_seconds", time.time() - self.spec.submitted))
        chain(self.frames.end_revision_call(keep=True), self.progress.write_call(
            JobState.DONE, stage="done", outcome=outcome, percent=100.0, frames_done=frames_done,
            manifest_key=manifest_key, message=f"Finished: {outcome}", active=False, on_entering=finished)).run(self.r)

    # cancel and the end of a revision ---------------------------------------------------------
    def cancel(self, revision: int) -> None:
        """Flag ``revision`` cancelled: its steps stop at their next check. A later revision (only
        possible when the cancelled one was not the first) clears the flag when it starts."""
        self._close(self.keys.cancelled, revision)

    def cancelled(self) -> bool:
        return bool(self.r.execute_command(*self.cancelled_read()))

    def mark_finalized(self, reads: tuple[tuple, ...] = ()) -> list:
        """Flag the job finalizing; then ``reads``, in the same round trip: each read's reply. They
        see the job as the flag left it: a step that checks the flag writes nothing after it."""
        return self._close(self.keys.finalized, 1, reads)

    def _close(self, flag: str, value: int, reads: tuple[tuple, ...] = ()) -> list:
        """Set ``flag`` (cancelled or finalized) and, in the same script, wake the slot holds
        waiting for the job's next round: none comes now."""
        _, replies = script_then_reads(self.r, "close_job", [flag, self.keys.rounds, self.keys.round_wake_prefix],
                                       [value, self.ttl, MAX_VARIATIONS, WAKE_TTL_S], reads)
        return replies

    def cancelled_read(self) -> tuple:
        """The Redis read of whether the running revision is cancelled (its reply: 1 or 0)."""
        return ("EXISTS", self.keys.cancelled)

    def closed(self) -> bool:
        """Cancelled or finalizing: no more traces or paid work for this job."""
        return bool(self.r.exists(self.keys.cancelled, self.keys.finalized))

    def write_if_alive(self, *commands: tuple, outcome: bool = False) -> bool:
        """Run ``commands`` atomically, only while the job exists: a step that outlived its job
        (expired, discarded, or Redis wiped under it) recreates none of its keys. They need not
        set an expiry: the job's hashes have it from create, and a list a command creates gets it.
        ``outcome``: the write stores the running step's outcome: it releases the step's lease
        where the step wrapper handed that release over (``leases.finishing``), and the reads of
        ``after_outcome``, if set, run right after it in the same round trip."""
        return self._write(commands, closing=False, outcome=outcome) > 0

    def write_while_open(self, *commands: tuple, on_written: Callable[[], object] | None = None) -> bool:
        """``write_if_alive``, and whether the job is still open (not cancelled or finalizing)
        after it, in the same round trip. ``on_written`` runs when the commands were written (the
        job exists), open or not."""
        written = self._write(commands, closing=True)
        if written and on_written is not None:
            on_written()
        return written == 1

    def _write(self, commands: tuple[tuple, ...], closing: bool, outcome: bool = False) -> int:
        closing_keys = [self.keys.cancelled, self.keys.finalized] if closing else []
        releasing = self.leases.finishing if outcome else None
        then = self.after_outcome if outcome else None
        keys = [self.keys.spec, *closing_keys, *(self.leases.release_keys(releasing.step) if releasing else [])]
        args = [self.ttl, len(closing_keys), releasing.owner if releasing else "", *packed(commands)]
        written, replies = script_then_reads(self.r, "write_if_alive", keys, args, then.reads if then else ())
        if releasing and written:
            self.leases.finishing = None
            releasing.released_by_write()
        if then and written:
            self.after_outcome = None
            then.keep(replies)
        return written


def _still_running(job_id: str, revision: str | None) -> RevisionRefused:
    return RevisionRefused(f"job_id: job {job_id!r} is still running revision {revision or 0}; "
                           "choose or regenerate once it is done")


def _first_run_cancelled(job_id: str) -> RevisionRefused:
    return RevisionRefused(f"job_id: job {job_id!r} was cancelled before it first finished; submit a new job")
