"""The errors a main app can get back from a fleet task: a small, closed set.

Celery sends a task's exception to the caller as its class name and message. A main app that
does not import framefleet gets a class of the same name made up on the fly
(``celery.exceptions.JobNotFound``), so it tells them apart by ``type(error).__name__``; with
framefleet installed they are these classes. Every message starts with the field it is about
(``job_id: no job 'promo-42'``), followed by a colon and the reason.
"""

from __future__ import annotations


class FleetError(Exception):
    """Base of the errors below (what a main app sees is the class name, not this base)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def field(self) -> str:
        """The field the message is about (its text before the first colon)."""
        return str(self).split(":", 1)[0]


class RequestError(FleetError, ValueError):
    """A request or argument that cannot run: the message names every offending field."""


class JobNotFound(FleetError, LookupError):
    """No job with this id: never submitted, or its state expired (``job_ttl_s``)."""


class JobExists(FleetError):
    """A create with a job id that is already in use."""


class RevisionRefused(FleetError):
    """A choose or regenerate the job cannot take now (it is running, or was cancelled)."""


class BudgetRefused(FleetError):
    """A choose or regenerate the job's spending cap (``overrides.max_usd``) cannot afford."""


# What each task may raise (README, "Main-app contract"); every other failure is a fleet defect.
ERRORS = (RequestError, JobNotFound, JobExists, RevisionRefused, BudgetRefused)
