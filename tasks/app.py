"""The Celery app: ``celery -A framefleet.workers.app worker -Q images`` (or ``framefleet worker``)."""

from celery import Celery
from framefleet.config.celery import celery_config
from framefleet.config.settings import Settings, get_settings

app = Celery("framefleet", include=["framefleet.tasks.entry", "framefleet.tasks.runtime.bootstrap",
                                    "framefleet.tasks.runtime.celery_compat"])


def configure(settings: Settings | None = None) -> Celery:
    """(Re)apply settings, e.g. after the demo has started its own Redis and set the broker URL."""
    config = celery_config(settings or get_settings())
    moved = config["broker_url"] != app.conf.broker_url or config["result_backend"] != app.conf.result_backend
    app.conf.update(config)
    if moved:
        # Connections pooled for the old Redis, and this thread's result backend, would still carry
        # sends, broadcasts and results there (Celery resets them only after a fork).
        app._after_fork()
        vars(app._local).pop("backend", None)
    return app


configure()
