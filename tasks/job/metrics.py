"""Fleet-wide metrics, recorded in Redis where things happen; ``framefleet exporter`` only reads them
(workers/exporter.py), so its counters are exact across exporter restarts and with several
exporters.

Everything is one hash, ``framefleet:metrics`` (job/keys.py ``FLEET_METRICS``): a field per
counter, ``name`` or ``name|label=value,...``, a float. A histogram is one field per bucket (the
observations that fell in it, not cumulative: one increment per observation) and a ``_sum``
field. Increments ride along with writes the fleet makes anyway, so they cost no extra round
trip on a frame's path:

- a frame's transition (``Frames.transition``, swap_frame.lua): its new fallback notes, the stage
  seconds the step measured; applied only when the compare-and-set writes, so exactly once;
- the job's state change (``Progress.write``, write_status.lua): jobs finished and their duration,
  applied only when the job enters ``done``; the same script moves the job between the counts
  by state (``framefleet:jobs:states``);
- a job's cost write (``Ledger.add_costs``): predictions, images, straggler cuts, dollars;
- provider request outcomes and waits for a provider slot (providers/, ratelimit.py) are counted
  in the process (``count``) and go with that process's next job write (``Job.write_if_alive``),
  or at the end of its task (``flush``) when it made none.
"""

from __future__ import annotations

import bisect
import math
import threading

import redis
from framefleet.tasks.job.keys import FLEET_METRICS

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


def commands(increments: Increments) -> list[tuple]:
    """The increments as Redis commands (for write_if_alive.lua's command list)."""
    return [("HINCRBYFLOAT", FLEET_METRICS, key, repr(float(amount))) for key, amount in increments.items()
            if amount and math.isfinite(amount)]


def script_args(increments: Increments) -> list:
    """The increments as a count followed by field/amount pairs (swap_frame.lua, write_status.lua)."""
    pairs = [(key, repr(float(amount))) for key, amount in increments.items() if amount and math.isfinite(amount)]
    return [len(pairs), *[part for pair in pairs for part in pair]]


class Pending:
    """Counts made in this process and not yet written (provider calls: many, small)."""

    def __init__(self) -> None:
        self._counts: Increments = {}
        self._lock = threading.Lock()

    def add(self, increments: Increments) -> None:
        with self._lock:
            for key, amount in increments.items():
                self._counts[key] = self._counts.get(key, 0) + amount

    def drain(self) -> Increments:
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts


pending = Pending()


def count(name: str, amount: float = 1, **labels: str) -> None:
    """Count in this process; written with the process's next job write or at the end of its task."""
    pending.add({field(name, **labels): amount})


def flush(client: redis.Redis) -> None:
    """Write what this process counted since its last write (one pipeline; nothing when empty)."""
    counts = pending.drain()
    if not counts:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for command in commands(counts):
            pipe.execute_command(*command)
        pipe.execute()
    except redis.RedisError:
        pending.add(counts)  # Redis restarting: the next write takes them
        raise
