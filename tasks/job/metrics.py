"""Fleet-wide metrics, recorded in Redis where things happen; ``framefleet exporter`` only reads them
(workers/exporter.py), so its counters are exact across exporter restarts and with several
exporters.

Everything is one hash, ``framefleet:metrics`` (job/keys.py ``FLEET_METRICS``): a field per
counter, ``name`` or ``name|label=value,...``, a float. A histogram is one field per bucket (the
observations that fell in it, not cumulative: one increment per observation) and a ``_sum``
field. What happens on a frame's path is counted in the process once the write it is about has
succeeded (``add``, ``count``), and each process writes its counts at most once a second, in one
script, from one thread (``Pending``), so counting costs a frame no Redis command:

- a frame's transition (``Frames.transition``): its new fallback notes, the stage seconds the
  step measured; counted only when the compare-and-set wrote, so once;
- a job's cost write (``Ledger.add_costs``, a variation's record): predictions, images, straggler
  cuts, dollars;
- provider request outcomes and waits for a provider slot (providers/, ratelimit.py).

A job's state change is rare and is counted in Redis with it (``Progress.write``,
write_status.lua): jobs finished and their duration, applied only when the job enters ``done``;
the same script moves the job between the counts by state (``framefleet:jobs:states``). Counts
a process made in its last second are lost if it is killed (a clean shutdown writes them).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import threading
import time
import uuid

import redis
from framefleet.tasks.job.keys import FLEET_METRICS

log = logging.getLogger(__name__)

Increments = dict[str, float]

# Upper bounds of the histogram buckets, seconds (+Inf implied).
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
JOB_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
HISTOGRAMS = {"job_duration_seconds": JOB_BUCKETS, "frame_stage_seconds": STAGE_BUCKETS}


def field(name: str, **labels: str) -> str:
    if not labels:
        return name
    return f"{name}|" + ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def parse_field(text: str) -> tuple[str, dict[str, str]]:
    name, _, labels = text.partition("|")
    return name, dict(pair.split("=", 1) for pair in labels.split(",")) if labels else {}


def observation(name: str, value: float, **labels: str) -> Increments:
    """One observation of histogram ``name``: its bucket and its sum."""
    bounds = HISTOGRAMS[name]
    value = max(0.0, value)
    index = bisect.bisect_left(bounds, value)
    le = f"{bounds[index]:g}" if index < len(bounds) else "+Inf"
    return {field(f"{name}_bucket", le=le, **labels): 1, field(f"{name}_sum", **labels): value}


def merged(*parts: Increments) -> Increments:
    out: Increments = {}
    for part in parts:
        for key, amount in part.items():
            out[key] = out.get(key, 0) + amount
    return out


def script_args(increments: Increments) -> list:
    """The increments as a count followed by field/amount pairs (write_status.lua)."""
    pairs = [(key, repr(float(amount))) for key, amount in increments.items() if amount and math.isfinite(amount)]
    return [len(pairs), *[part for pair in pairs for part in pair]]


FLUSH_INTERVAL_S = 1.0
BATCH_MARKER_TTL_S = 300  # longer than any retry of a flush


class Pending:
    """Counts made in this process and not yet written, and the thread that writes them."""

    def __init__(self) -> None:
        self._counts: Increments = {}
        self._lock = threading.Lock()
        self._pid: int | None = None
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        """A forked child writes none of its parent's counts (the parent does)."""
        self._counts, self._lock, self._pid = {}, threading.Lock(), None

    def add(self, increments: Increments) -> None:
        with self._lock:
            for key, amount in increments.items():
                if amount and math.isfinite(amount):
                    self._counts[key] = self._counts.get(key, 0) + amount
            if self._pid != os.getpid():  # the first count in this process (or after a fork)
                try:
                    threading.Thread(target=self._run, name="framefleet-metrics", daemon=True).start()
                    self._pid = os.getpid()
                except RuntimeError as error:  # no thread now (interpreter exiting): the next count tries again
                    log.warning("fleet metrics thread not started: %s", error)

    def drain(self) -> Increments:
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts

    def _run(self) -> None:
        from framefleet.tasks.job.redis import state_client

        while True:
            time.sleep(FLUSH_INTERVAL_S)
            try:
                flush(state_client())
            except Exception as error:  # noqa: BLE001 — Redis restarting: kept for the next round
                log.warning("fleet metrics not written yet: %s", error)


pending = Pending()


def add(increments: Increments) -> None:
    """Count ``increments`` in this process; its metrics thread writes them within a second."""
    pending.add(increments)


def count(name: str, amount: float = 1, **labels: str) -> None:
    pending.add({field(name, **labels): amount})


def flush(client: redis.Redis) -> None:
    """Write what this process counted since its last write, once (add_metrics.lua; nothing when
    empty). A batch that did not reach Redis is kept for the next flush."""
    counts = pending.drain()
    if not counts:
        return
    from framefleet.tasks.job.redis import script

    batch = f"{FLEET_METRICS}:batch:{uuid.uuid4().hex}"
    pairs = [part for key, amount in counts.items() for part in (key, repr(float(amount)))]
    try:
        skipped = script(client, "add_metrics")(keys=[FLEET_METRICS, batch], args=[BATCH_MARKER_TTL_S, *pairs])
    except redis.RedisError:
        pending.add(counts)
        raise
    if skipped:
        log.warning("fleet metrics fields that are not numbers were left as they are: %s", skipped)
