"""The Celery app: ``celery -A framefleet.workers.app worker -Q images`` (or ``framefleet worker``)."""

from celery import Celery
from framefleet.config.celery import celery_config
from framefleet.config.settings import Settings, get_settings

app = Celery("framefleet", include=["framefleet.tasks.entry", "framefleet.tasks.runtime.bootstrap",
                                    "framefleet.tasks.runtime.celery_compat"])


def configure(settings: Settings | None = None) -> Celery:
    """(Re)apply settings, e.g. after the demo has started its own Redis and set the broker URL."""
    config = celery_config(settings or get_settings())
    if config["broker_url"] != app.conf.broker_url:
        # Connections pooled for the old broker would still carry sends and broadcasts there
        # (Celery resets its pools only after a fork).
        app._after_fork()
    app.conf.update(config)
    return app


configure()
