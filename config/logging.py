"""Logging setup: plain lines for humans, JSON lines with ``FRAMEFLEET_LOG_JSON=true``.

Every line carries the job id, frame, variation and task id of the task being run (set by the
worker bootstrap from the task's arguments), so one job can be followed through the fleet.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

from framefleet.config.settings import Settings

CONTEXT_FIELDS = ("job_id", "frame", "variation", "task_id")
task_context: ContextVar[dict[str, str] | None] = ContextVar("framefleet_task_context", default=None)


class TaskContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = task_context.get() or {}
        for field in CONTEXT_FIELDS:
            if not hasattr(record, field):
                setattr(record, field, context.get(field, "-"))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({f: getattr(record, f) for f in CONTEXT_FIELDS if getattr(record, f, "-") != "-"})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


PLAIN_FORMAT = "%(asctime)s %(levelname)s [%(job_id)s %(frame)s v%(variation)s %(task_id)s] %(name)s: %(message)s"


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(JsonFormatter() if settings.log_json else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
