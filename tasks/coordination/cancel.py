"""Cancel a job's running revision: flag it, revoke what is queued, cancel its paid predictions in
flight, and send a fresh finalize (which ends the revision as cancelled: steps/finalize.py)."""

from __future__ import annotations

from framefleet.config.celery import FINALIZE_JOB
from framefleet.tasks.app import app
from framefleet.tasks.artifacts.keys import revision_of
from framefleet.tasks.coordination.dispatch import send
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import CancelResult
from framefleet.tasks.providers import image_generator


def cancel(job: Job) -> CancelResult:
    status = job.progress.read()  # JobNotFound for an unknown job
    if status.state == "done":
        return CancelResult(job_id=job.id, cancelled=False, revision=status.revision,
                            reason="the job had already finished")
    revision = status.revision
    job.cancel(revision)  # running steps stop at their next check
    app.control.revoke(sorted(job.ledger.task_ids()))  # the running revision's tasks only
    predictions = [prediction for ledger_key, prediction in job.ledger.predictions().items()
                   if revision_of(ledger_key) == revision]
    if predictions and job.spec.providers.get("images") == "replicate":
        generator = image_generator()
        for prediction_id in predictions:
            generator.cancel(prediction_id)
    job.progress.write(message="Cancelling")
    # Always a fresh finalize: one the last selection queued was revoked above (a copy already
    # running finishes, and this one then returns its result).
    send(job, FINALIZE_JOB, (job.id, revision))
    return CancelResult(job_id=job.id, cancelled=True, revision=revision, predictions_cancelled=len(predictions))
