"""One fleet-wide watcher per Replicate account instead of one poll per prediction in flight.

Every process that waits for predictions runs a watcher thread; a Redis lease (SET NX PX, renewed
every sweep) makes exactly one of them active. The active one lists ``GET /v1/predictions``
(newest first, one call returns a page of many) back to the oldest prediction still in flight,
and publishes each one's status in Redis. Waiting tasks block on a Redis list (BLPOP) that the
watcher pushes to when their prediction ends, so waiting costs no provider calls. A prediction
missing from the listings for ``replicate_reconcile_after_s`` is fetched on its own, a few per
sweep (the reconcile). When the active process dies its lease expires and another takes over;
the in-flight set lives in Redis, so nothing is lost.

Keys (job/keys.py ReplicateKeys; ``{p}`` = ``framefleet:replicate:{account}``):
  {p}:inflight             zset prediction id → its created_at (Replicate's clock)
  {p}:prediction:{id}      JSON {status, output, error}, published by the watcher
  {p}:wake:{id}            list the watcher pushes to when the prediction ends
  {p}:watcher:lease        the active watcher's "host:pid:thread"
  {p}:watcher:swept        time of the last complete sweep (Redis clock)
  {p}:watchers             hash host → last heartbeat of a watcher thread there (for the health check)

``python -m framefleet.tasks.providers.replicate_watcher`` is the images workers' health check.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime
from typing import Callable

import redis
from framefleet.config.settings import Settings
from framefleet.tasks.job.keys import ReplicateKeys
from framefleet.tasks.job.redis import script
from framefleet.tasks.providers.ratelimit import account_key

log = logging.getLogger(__name__)
TERMINAL = ("succeeded", "failed", "canceled", "aborted")
STATUS_TTL_S = 3600
DEFAULT_BASE_URL = "https://api.replicate.com"



def account_id(settings: Settings) -> str:
    """Budgets belong to an account: fleets on different tokens (or servers) watch separately."""
    token = settings.replicate_api_token.get_secret_value() if settings.replicate_api_token else ""
    return account_key(os.environ.get("REPLICATE_BASE_URL", DEFAULT_BASE_URL), token)


def api_time(stamp: str | None) -> float:
    """Replicate's created_at as epoch seconds (0 when missing: treated as the oldest)."""
    if not stamp:
        return 0.0
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class PredictionBoard:
    """The Redis side: predictions in flight, their published status, the wake-ups."""

    def __init__(self, client: redis.Redis, account: str):
        self.r = client
        self.keys = ReplicateKeys(account)
        self.inflight, self.lease = self.keys.inflight, self.keys.watcher_lease
        self.swept, self.watchers = self.keys.watcher_swept, self.keys.watchers

    def track(self, prediction_id: str, created_at: str | None) -> None:
        self.r.zadd(self.inflight, {prediction_id: api_time(created_at)}, nx=True)

    def untrack(self, prediction_id: str) -> None:
        self.r.zrem(self.inflight, prediction_id)

    def in_flight(self) -> dict[str, float]:
        return dict(self.r.zrange(self.inflight, 0, -1, withscores=True))

    def publish(self, prediction_id: str, status: str, output=None, error=None) -> None:
        pipe = self.r.pipeline()
        pipe.set(self.keys.prediction(prediction_id),
                 json.dumps({"status": status, "output": output, "error": error}), ex=STATUS_TTL_S)
        if status in TERMINAL:
            pipe.rpush(self.keys.wake(prediction_id), status)
            pipe.expire(self.keys.wake(prediction_id), STATUS_TTL_S)
            pipe.zrem(self.inflight, prediction_id)
        pipe.execute()

    def status(self, prediction_id: str) -> dict | None:
        raw = self.r.get(self.keys.prediction(prediction_id))
        return json.loads(raw) if raw else None

    def wait(self, prediction_id: str, timeout_s: float) -> None:
        """Block until the watcher says the prediction ended, or ``timeout_s`` passed."""
        self.r.blpop([self.keys.wake(prediction_id)], timeout=max(0.01, timeout_s))


Lister = Callable[[str | None], tuple[list, str | None]]  # cursor → (predictions, next cursor)
Fetcher = Callable[[str], object]  # prediction id → the prediction (None: Replicate no longer knows it)


class PredictionWatcher:
    """The watcher thread of one process; active only while it holds the account's lease."""

    def __init__(self, settings: Settings, board: PredictionBoard, list_page: Lister, fetch: Fetcher):
        self.settings, self.board, self.list_page, self.fetch = settings, board, list_page, fetch
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.holding = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._last_seen: dict[str, float] = {}  # id → monotonic time it was last listed (this holder's view)
        self._published: dict[str, str] = {}  # id → status last published by this holder
        self._renew = script(board.r, "renew_if_owner")
        self._release = script(board.r, "delete_if_owner")

    def ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="replicate-watcher", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.replicate_http_timeout_s)
        self._release(keys=[self.board.lease], args=[self.me])
        self.holding = False

    def _run(self) -> None:
        interval = self.settings.replicate_poll_interval_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.board.r.hset(self.board.watchers, socket.gethostname(), self.board.r.time()[0])
                if self._hold_lease():
                    self.sweep()
            except Exception as error:  # a failed sweep (Redis or Replicate down) is retried next round
                log.warning("prediction watcher sweep failed: %s", error)
            pause = interval if self.holding else self.settings.replicate_watch_lease_s / 3
            self._stop.wait(max(0.0, pause - (time.monotonic() - started)))

    def _hold_lease(self) -> bool:
        millis = int(self.settings.replicate_watch_lease_s * 1000)
        if self.holding:
            self.holding = bool(self._renew(keys=[self.board.lease], args=[self.me, millis]))
        else:
            self.holding = bool(self.board.r.set(self.board.lease, self.me, nx=True, px=millis))
            if self.holding:  # a new holder starts with a fresh view: everything counts as just seen
                log.info("prediction watcher %s is now active", self.me)
                self._last_seen.clear()
                self._published.clear()
        return self.holding

    def sweep(self) -> None:
        """List back to the oldest prediction in flight, publish changes, reconcile the missing."""
        tracked = self.board.in_flight()
        now = time.monotonic()
        if tracked:
            oldest = min(tracked.values())
            seen: set[str] = set()
            cursor = None
            for _ in range(self.settings.replicate_watch_max_pages):
                predictions, cursor = self.list_page(cursor)
                for prediction in predictions:
                    if prediction.id in tracked:
                        seen.add(prediction.id)
                        self._publish(prediction)
                if not cursor or not predictions or api_time(predictions[-1].created_at) < oldest:
                    break
            for prediction_id in tracked:
                if prediction_id in seen:
                    self._last_seen[prediction_id] = now
                else:
                    self._last_seen.setdefault(prediction_id, now)
            self._reconcile([p for p in tracked if p not in seen], now)
        for prediction_id in set(self._last_seen) - set(tracked):
            del self._last_seen[prediction_id]
            self._published.pop(prediction_id, None)
        seconds, _ = self.board.r.time()
        self.board.r.set(self.board.swept, seconds, ex=STATUS_TTL_S)

    def _reconcile(self, missing: list[str], now: float) -> None:
        """A prediction the listings have not shown for long (lost off the pages, or listed late) is
        fetched on its own, the longest-missing first, a few per sweep."""
        stale = sorted((self._last_seen[p], p) for p in missing
                       if now - self._last_seen[p] >= self.settings.replicate_reconcile_after_s)
        for _, prediction_id in stale[:self.settings.replicate_reconcile_per_sweep]:
            prediction = self.fetch(prediction_id)
            self._last_seen[prediction_id] = now
            if prediction is None:
                self.board.publish(prediction_id, "failed", error="Replicate no longer knows this prediction")
            else:
                log.info("reconciled prediction %s: %s", prediction_id, prediction.status)
                self._publish(prediction)

    def _publish(self, prediction) -> None:
        if self._published.get(prediction.id) == prediction.status:
            return
        self._published[prediction.id] = prediction.status
        self.board.publish(prediction.id, prediction.status, prediction.output,
                           str(prediction.error) if prediction.error else None)


def health(settings: Settings, client: redis.Redis, host: str) -> tuple[bool, str]:
    """Healthy unless this host's watcher thread stopped beating, or this host holds the lease and
    has not finished a sweep for a while (a hung watcher: restarting the worker hands the lease on)."""
    board = PredictionBoard(client, account_id(settings))
    beat = client.hget(board.watchers, host)
    now = client.time()[0]
    stale_after = 3 * max(settings.replicate_watch_lease_s, settings.replicate_poll_interval_s)
    if beat is None:
        return True, "no watcher started on this host yet (no prediction waited on)"
    if now - float(beat) > stale_after:
        return False, f"watcher thread on {host} silent for {now - float(beat):.0f}s"
    holder = client.get(board.lease)
    holder = holder.decode() if isinstance(holder, bytes) else holder
    swept = client.get(board.swept)
    if holder and holder.startswith(f"{host}:") and (swept is None or now - float(swept) > stale_after):
        return False, f"{host} holds the watcher lease but has not finished a sweep for {stale_after:.0f}s"
    return True, f"watcher alive; lease holder {holder or 'none'}; in flight {client.zcard(board.inflight)}"


if __name__ == "__main__":
    from framefleet.config.settings import get_settings
    from framefleet.tasks.job.redis import state_client

    try:
        ok, message = health(get_settings(), state_client(), socket.gethostname())
    except redis.RedisError as error:
        ok, message = False, f"watcher health: Redis unreachable: {error}"
    print(message, file=sys.stdout if ok else sys.stderr)
    sys.exit(0 if ok else 1)
