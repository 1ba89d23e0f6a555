"""The fleet's Celery app, where operators name it: ``celery -A framefleet.workers.app worker -Q images``.

The app itself lives in ``framefleet.tasks.app`` with the tasks it runs (the lower layer); this
module is the stable name for the command line, deploy/ and main apps' tooling.
"""

from framefleet.tasks.app import app, configure

__all__ = ["app", "configure"]
