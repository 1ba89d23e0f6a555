"""The Celery app, worker bootstrap, CLI, artifact store and provider clients."""
