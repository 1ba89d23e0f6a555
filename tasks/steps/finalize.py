"""The end of a revision (intake queue): the manifest, the contact sheet, the traces cleared, the
job done, and the main app's completion callback sent once.

A revision after the first that was cancelled ends without its changes: its draft is dropped, so
the frames and the manifest stay as the last finished revision left them, and the callback says
the revision was cancelled.
"""

from __future__ import annotations

import logging
import time

from framefleet.config.celery import NOTIFY_MAIN_APP
from framefleet.config.settings import get_settings
from framefleet.tasks.app import app
from framefleet.tasks.artifacts.keys import manifest_key
from framefleet.tasks.artifacts.manifest import build_manifest, estimate_cost, write_contact_sheet
from framefleet.tasks.artifacts.store import fleet_store
from framefleet.tasks.coordination.dispatch import send
from framefleet.tasks.coordination.leases import Stored
from framefleet.tasks.job.errors import JobNotFound
from framefleet.tasks.job.frames import FrameViews
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import Budget, CompletionCallback

log = logging.getLogger(__name__)


def finalized(job: Job, revision: int) -> Stored[dict]:
    """The finalize's result once the revision is done (the step's outcome)."""
    def parse(reply: list[str | None]) -> dict | None:
        state, stored_revision, outcome, manifest = reply
        if state is None:
            raise JobNotFound(f"job_id: no job {job.id!r}")
        if state != "done" or int(stored_revision or 0) != revision:
            return None
        return {"job_id": job.id, "status": outcome or None, "manifest": manifest or None, "revision": revision}

    return Stored(("HMGET", job.keys.status, "state", "revision", "outcome", "manifest_key"), parse)


def callback_sent(job: Job, revision: int) -> Stored[dict]:
    """The notify step's outcome once the revision's callback was sent."""
    sent = {"job_id": job.id, "revision": revision, "sent": True}
    return Stored(job.ledger.callback_sent_read(revision), lambda exists: sent if exists else None)


def finalize(job: Job, revision: int) -> dict:
    store, spec = fleet_store(), job.spec
    cancelled, frames, costs = job.mark_finalized(reads=(job.cancelled_read(), job.frames.read_all_command(),
                                                         job.ledger.costs_read()))
    if revision > 0 and cancelled:
        return abandon(job, revision)
    frames = job.frames.parse_all(frames)
    manifest = build_manifest(spec, frames, time.time(), estimate_cost(spec, job.ledger.parse_costs(costs),
                                                                       get_settings()), cancelled=bool(cancelled))
    manifest.revision = revision
    if spec.config.max_usd is not None:
        manifest.budget = Budget(max_usd=spec.config.max_usd, committed_usd=round(job.budget.committed(), 6),
                                 degradations=job.budget.degradations())
        manifest.warnings += manifest.budget.degradations
    manifest.contact_sheet = write_contact_sheet(store, spec, manifest)
    store.put(manifest_key(job.id), manifest.model_dump_json(indent=2).encode(), "application/json")
    if not spec.config.keep_traces:
        store.delete_prefix(f"traces/{job.id}")
    for frame in manifest.frames:
        log.info("%s/%s quality: %s", job.id, frame.name, frame.selected.overall if frame.selected else "no image")
    if spec.callback is not None:  # before "done": a finalize that dies here is re-driven, notify dedups
        send(job, NOTIFY_MAIN_APP, (job.id, revision, manifest.status, manifest.failed_clips))
    job.finish(manifest.status, FrameViews.of_records(frames).settled(), manifest_key(job.id), revision)
    return {"job_id": job.id, "status": manifest.status, "manifest": manifest_key(job.id), "revision": revision}


def abandon(job: Job, revision: int) -> dict:
    if job.spec.callback is not None:
        send(job, NOTIFY_MAIN_APP, (job.id, revision, "cancelled", []))
    changed = job.abandon_revision(f"Revision {revision} cancelled; the job keeps its last finished revision",
                                   outcome="cancelled")
    log.info("%s revision %s cancelled; %s keep the last finished revision", job.id, revision, changed)
    return {"job_id": job.id, "status": "cancelled", "manifest": manifest_key(job.id), "revision": revision}


class CallbackNotSent(Exception):
    """The broker did not take the main app's callback: sent again later."""


def notify_main_app(job: Job, revision: int, outcome: str, failed_clips: list[int]) -> dict:
    """Send the main app's completion callback by name (its outcome as finalize saw it)."""
    callback = job.spec.callback
    payload = CompletionCallback(job_id=job.id, kind=job.spec.kind, status=outcome, revision=revision,
                                 manifest_key=manifest_key(job.id), failed_clips=failed_clips)
    try:
        app.send_task(callback.task, args=[payload.model_dump(mode="json")], queue=callback.queue)
    except Exception as error:  # the broker hiccuped: try again later, the job is done either way
        log.warning("completion callback %s for %s failed (%s); retrying", callback.task, job.id, error)
        raise CallbackNotSent(str(error)) from error
    job.ledger.mark_callback_sent(revision)
    log.info("completion callback %s sent for %s revision %s", callback.task, job.id, revision)
    return {"job_id": job.id, "revision": revision, "sent": True}
