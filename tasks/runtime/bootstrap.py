"""Worker bootstrap: logging, traces (runtime/tracing.py), and the scorer loaded once per process
on gpu workers.

The scorer is built in the process that runs the tasks (``worker_process_init``: each prefork
child, or the solo pool's one process), so CUDA is never initialised in a parent that forks
afterwards. A threads pool loads it on the first scoring task.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from functools import lru_cache

import redis
from celery.concurrency import get_implementation
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    task_received,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from framefleet.config.celery import (
    CREATE_TASKS,
    ENHANCE_PROMPT,
    GENERATE_VARIATION,
    JUDGE_CANDIDATES,
    SCORE_VARIATIONS,
    SELECT_VARIATION,
)
from framefleet.config.logging import setup_logging as configure_logging
from framefleet.config.logging import task_context
from framefleet.config.settings import get_settings
from framefleet.scoring import Scorer, create_scorer
from framefleet.scoring.weights import check_sources, missing_models
from framefleet.tasks.job import metrics
from framefleet.tasks.job.redis import state_client
from framefleet.tasks.runtime import tracing

log = logging.getLogger(__name__)
_consumed_queues: set[str] = set()


def scorer_name() -> str:
    """``auto`` picks the model scorer when torch is installed and every model's weights are here."""
    settings = get_settings()
    if settings.scorer != "auto":
        return settings.scorer
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("open_clip") is None:
        log.warning("scorer auto: torch/open_clip not installed (the `scoring` extra)")
        return "heuristic"
    missing = missing_models(check_sources(settings.model_sources()), with_hps=settings.score_weights.hps > 0)
    for model, why in missing.items():
        log.warning("scorer auto: %s %s", model, why)
    return "heuristic" if missing else "models"


_scorer_lock = threading.Lock()


def process_scorer() -> Scorer:
    with _scorer_lock:  # threads pool: load once, not once per thread
        return _load_scorer()


@lru_cache(maxsize=1)
def _load_scorer() -> Scorer:
    name = scorer_name()
    if name == "heuristic":
        log.warning("scoring with the HEURISTIC scorer (image statistics, not PickScore/CLIP/aesthetic models)")
    if name == "models":  # HPS is loaded only when the fleet's weights use it
        settings = get_settings()
        return create_scorer(name, sources=settings.model_sources(), with_hps=settings.score_weights.hps > 0)
    return create_scorer(name)


@setup_logging.connect
def _setup_logging(**_) -> None:
    configure_logging(get_settings())


# Positional arguments of each task, for the log context (None: a chord/chain result).
TASK_ARGUMENTS = {
    GENERATE_VARIATION: ("job_id", "frame", "stage", "variation"),
    SCORE_VARIATIONS: (None, "job_id", "frame"),
    JUDGE_CANDIDATES: (None, "job_id", "frame", "stage"),
    SELECT_VARIATION: (None, "job_id", "frame", "stage"),
    ENHANCE_PROMPT: ("job_id", "frame"),
}


@task_prerun.connect
def _enter_task_context(task_id, task, args, kwargs, **_) -> None:
    context = {"task_id": task_id[:8]}
    for name, value in zip(TASK_ARGUMENTS.get(task.name, ("job_id",)), args or ()):
        if name and isinstance(value, (str, int)):
            context[name] = str(value)
    if args and isinstance(args[0], dict) and isinstance(args[0].get("job_id"), str):  # a create request
        context["job_id"] = args[0]["job_id"]
    task_context.set(context)


def describe_request(args) -> str:
    """A create request as Flower shows it: the job, never its prompts or other text."""
    request = args[0] if args else None
    if isinstance(request, dict):
        items = request.get("clips") or request.get("scene_prompts") or []
        size = len(items) if isinstance(items, list) else "?"
        return f"(<request job_id={request.get('job_id')!r}, {size} clips or scenes>,)"
    return f"(<request as {type(request).__name__}>,)"


@task_received.connect
def _hide_request_text(request, **_) -> None:
    # Sent before the worker's task-received event, whose args Flower shows: a main app's create
    # message carries the whole request (prompts and all) in its argsrepr.
    if request.name in CREATE_TASKS.values():
        request._argsrepr = describe_request(request.args)
        request._kwargsrepr = "{}"


@task_postrun.connect
def _leave_task_context(**_) -> None:
    task_context.set(None)


@worker_init.connect
def _remember_queues(sender, **_) -> None:
    # Sent after -Q is applied and before the pool exists.
    _consumed_queues.update(sender.app.amqp.queues.consume_from)
    # A pool that does not fork runs tasks in this process; the threads pool sends no
    # worker_process_init. A prefork parent is left alone: its children trace.
    if get_implementation(sender.pool_cls).__module__ != "celery.concurrency.prefork" and tracing.configured():
        tracing.instrument()


def consumed_queues() -> frozenset[str]:
    """The queues this worker process consumes (empty outside a worker)."""
    return frozenset(_consumed_queues)


@worker_process_init.connect
def _start_process(**_) -> None:
    if tracing.configured():
        tracing.instrument()
    if "gpu" in _consumed_queues:
        process_scorer()


@worker_process_shutdown.connect
def _flush_traces(**_) -> None:
    tracing.flush()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _flush_metrics(**_) -> None:
    """The counts of this process's last second (job/metrics.py), on a clean shutdown."""
    try:
        metrics.flush(state_client())
    except (redis.RedisError, RuntimeError) as error:
        log.warning("fleet metrics of this process's last second not written: %s", error)
