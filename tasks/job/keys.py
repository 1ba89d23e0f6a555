"""Every Redis key the fleet writes, in one table.

A job's keys live under ``framefleet:job:{id}:`` and expire after ``job_ttl_s`` (a revision
renews the lasting ones); the fleet-wide lists under ``framefleet:jobs:``; provider budgets and the
Replicate prediction watcher under ``framefleet:ratelimit:`` and ``framefleet:replicate:``. The
broker's own keys (queues, ``unacked``, bindings) are kombu's (config/celery.py ``broker_lists``);
the fleet-wide metrics are ``framefleet:metrics`` and ``framefleet:jobs:states``.
"""

from __future__ import annotations

ACTIVE_JOBS = "framefleet:jobs:active"  # set: jobs not finished (the watchdog's list)
RECENT_JOBS = "framefleet:jobs:recent"  # zset job id → submitted; trimmed to job_ttl_s
PARKED_JOBS = "framefleet:jobs:parked"  # hash job id → why the watchdog parked it; trimmed with recent
CREATING_JOBS = "framefleet:jobs:creating"  # zset job id → when its create began, until it finishes
LEASES = "framefleet:leases"  # zset lease key → when it runs out (epoch ms): the watchdog's index
WATCHDOG_ROUNDS = "framefleet:watchdog:rounds"  # counter: watchdog rounds run
STALL_SWEEP = "framefleet:watchdog:stall_sweep"  # when the last sweep for stalled jobs began (epoch ms, Redis TIME)
# Fleet-wide metrics (job/metrics.py; workers/exporter.py reads them). Never expire: counters.
FLEET_METRICS = "framefleet:metrics"  # hash "name" or "name|label=value,..." → float counter
# (beside it, "framefleet:metrics:batch:{id}": a written batch of counts, 5 minutes: add_metrics.lua)
JOB_STATE_COUNTS = "framefleet:jobs:states"  # hash job state → jobs in it (queued, running), moved on transitions
# The field the job's per-step hashes are created with (``JobKeys.ANCHORED``): they exist, with the
# job's TTL, from its create on, so the steps' writes never set an expiry. Readers skip it.
ANCHOR = "."


class JobKeys:
    """The keys of one job.

    Lasting (renewed when a revision starts):
      spec         JSON JobSpec, written once at create (SET NX: the job id's claim)
      frames       hash frame → JSON FrameRecord, as the last finished revision left it (the
                   first run builds here); "draft:{frame}" → the running revision's record of a
                   frame it changes (merged into the frame's field when it finishes, dropped on cancel)
      views        hash with the same fields as frames → JSON [state, clip, selected frame key] of
                   that record, written with it (what a dispatch reads of every frame)
      status       hash of the JobStatus fields (what a main app reads); events: its pub/sub channel
      history      list of "stage: message" lines, in order
      variations   hash "{frame}/{revision}/{source}/{index}" → JSON VariationRecord
      scored       hash "{frame}/{revision}/{source}" → JSON scoring result
      judged       hash "{frame}/{revision}/{source}" → JSON scoring result with the judge's verdict
      llm          hash "{frame}/{prompt digest}/{iteration}/{agent}" → a paid LLM reply (the judge's
                   replies too: agent "judge", the digest of the round and the pair, iteration = the order)
      cost         hash "{frame}:{counter}" → int (the job's totals are their sums, made on read)
      (these five are created at create with the ANCHOR field, and keep the job's TTL)
      predictions  hash "{variation key}#{attempt}" → Replicate prediction id
      offline_calls  list of the offline image provider's calls (its stand-in for a bill)
      budget       committed estimated spend (float); degradations: list of notes
      rounds       generation rounds enqueued (counter; slot holding waits for the next)
      redrives     hash step → how often the watchdog re-drove it; "stalled:{revision}/{frames done}"
                   → how often it resumed the job stalled there
    Of the running revision:
      cancelled    the revision that was cancelled; finalized: set when its finalize starts
      tasks        set of its enqueued task ids (revoked on cancel)
    Of one step: lease:{step} (owner token, PX lease_ttl_s; indexed in LEASES while the step
    runs), once:{step} (a once-only claim), round-wake:{n} (list, 60 s),
    budget:round:{frame}/{round} (the images reserved for a round), callback-sent:{revision}.
    """

    LASTING = ("spec", "frames", "views", "status", "history", "variations", "scored", "judged", "llm", "cost",
               "predictions", "offline_calls", "budget", "degradations", "rounds", "redrives")

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.prefix = f"framefleet:job:{job_id}:"
        for part in (*self.LASTING, "cancelled", "finalized", "tasks", "events"):
            setattr(self, part, self.prefix + part)

    ANCHORED = ("variations", "scored", "judged", "llm", "cost")

    def lasting(self) -> list[str]:
        return [self.prefix + part for part in self.LASTING]

    def anchored(self) -> list[str]:
        return [self.prefix + part for part in self.ANCHORED]

    def lease(self, step: str) -> str:
        return f"{self.prefix}lease:{step}"

    @property
    def lease_prefix(self) -> str:
        return f"{self.prefix}lease:"

    @staticmethod
    def of_lease(lease: str) -> tuple[str, str]:
        """(job id, step) of a lease key."""
        job_id, _, step = lease.removeprefix("framefleet:job:").partition(":lease:")
        return job_id, step

    def claim(self, step: str) -> str:
        return f"{self.prefix}once:{step}"

    def round_wake(self, rounds: int) -> str:
        return f"{self.round_wake_prefix}{rounds}"

    @property
    def round_wake_prefix(self) -> str:
        return f"{self.prefix}round-wake:"

    def budget_round(self, round_id: str) -> str:
        return f"{self.prefix}budget:round:{round_id}"

    def callback_sent(self, revision: int) -> str:
        return f"{self.prefix}callback-sent:{revision}"

    def replicate_file(self, digest: str) -> str:
        """The Replicate files-API URL of an input image of this job (until the file expires)."""
        return f"framefleet:replicate:job:{self.job_id}:file:{digest}"

    def replicate_upload(self, digest: str) -> str:
        """The short lock of the one upload of an input image."""
        return f"framefleet:replicate:job:{self.job_id}:upload:{digest}"

    def patterns(self) -> list[str]:
        """Every key of the job, as SCAN patterns (a create that failed half-way is discarded)."""
        return [f"{self.prefix}*", f"framefleet:replicate:job:{self.job_id}:*"]


class RateLimitKeys:
    """One fleet-wide budget: a zset of the requests in its window, the tokens' zset, the pause."""

    def __init__(self, name: str):
        self.requests = f"framefleet:ratelimit:{name}"
        self.tokens = f"{self.requests}:tokens"
        self.paused = f"{self.requests}:paused"


class ReplicateKeys:
    """The prediction watcher of one Replicate account (tasks/providers/replicate_watcher.py)."""

    def __init__(self, account: str):
        self.prefix = f"framefleet:replicate:{account}"
        self.inflight = f"{self.prefix}:inflight"  # zset prediction id → created_at
        self.watcher_lease = f"{self.prefix}:watcher:lease"  # the active watcher's "host:pid:thread"
        self.watcher_swept = f"{self.prefix}:watcher:swept"  # time of its last complete sweep
        self.watchers = f"{self.prefix}:watchers"  # hash host → last heartbeat of a watcher thread

    def prediction(self, prediction_id: str) -> str:
        """JSON {status, output, error}, published by the watcher."""
        return f"{self.prefix}:prediction:{prediction_id}"

    def wake(self, prediction_id: str) -> str:
        """The list the watcher pushes to when the prediction ends."""
        return f"{self.prefix}:wake:{prediction_id}"
