"""The Celery app: ``celery -A framefleet.workers.app worker -Q images`` (or ``framefleet worker``)."""

from celery import Celery
from framefleet.config.celery import celery_config
from framefleet.config.settings import Settings, get_settings

app = Celery("framefleet", include=["framefleet.tasks.entry", "framefleet.tasks.runtime.bootstrap",
                                    "framefleet.tasks.runtime.celery_compat"])


def configure(settings: Settings | None = None) -> Celery:
    """(Re)apply settings, e.g. after the demo has started its own Redis and set the broker URL."""
    app.conf.update(celery_config(settings or get_settings()))
    return app


configure()
