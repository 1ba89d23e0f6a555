"""The Celery app: ``celery -A workers.app worker -Q images`` (or ``framefleet worker``)."""

from celery import Celery

from config.celery import celery_config
from config.settings import Settings, get_settings

app = Celery("framefleet", include=["tasks.pipeline", "workers.bootstrap", "workers.celery_compat"])


def configure(settings: Settings | None = None) -> Celery:
    """(Re)apply settings, e.g. after the demo has started its own Redis and set the broker URL."""
    app.conf.update(celery_config(settings or get_settings()))
    return app


configure()
