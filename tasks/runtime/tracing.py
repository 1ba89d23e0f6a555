"""Traces (the optional ``otel`` extra; docs/operations.md): with ``OTEL_EXPORTER_OTLP_ENDPOINT``
set, every worker process sends its spans over OTLP/HTTP, and each job is one trace.

- Every task run is a span (opentelemetry-instrumentation-celery), labelled with the job, frame and
  variation it belongs to; the trace context travels in each Celery message's headers, so a step's
  span is the child of the step that sent it: create → enhance → generate × n → score → select →
  the next frame's round … → finalize → notify.
- Provider calls are child spans of the step that makes them: the Replicate client's calls and the
  image downloads through opentelemetry-instrumentation-httpx, each OpenAI completion as a span of
  its own (``provider_call``: the official client runs on httpx2, which that instrumentation does
  not see).
- A create without a parent in its message (a main app that does not trace) is the root of its
  job's trace; its context is kept in the job's spec. A step sent from outside that trace (the
  watchdog's re-drive, resume, cancel, a revision) is sent inside it (``in_job_trace``), so the job
  stays one trace. Nothing else starts a trace: the watchdog's rounds, status reads and the
  prediction watcher's listings are not recorded (``JobTraces``).

Instrumented once per process, where it runs tasks: ``worker_process_init`` (prefork children, the
solo pool), or ``worker_init`` for a threads pool, which sends no ``worker_process_init``
(runtime/bootstrap.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from typing import Callable, Iterator

from celery.signals import task_prerun
from framefleet.config.celery import CREATE_TASKS
from framefleet.config.logging import task_context

log = logging.getLogger(__name__)

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
ROOT_SPANS = frozenset(f"run/{task}" for task in CREATE_TASKS.values())  # the Celery instrumentation's names
SPAN_ATTRIBUTES = {"job_id": "framefleet.job_id", "frame": "framefleet.frame", "variation": "framefleet.variation",
                   "stage": "framefleet.prompt_source"}

_provider = None  # this process's TracerProvider once instrumented
_instrumented_pid: int | None = None


def configured() -> bool:
    """Traces are wanted (the endpoint is set) and the ``otel`` extra is installed."""
    if not os.environ.get(ENDPOINT):
        return False
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        log.warning("%s is set but the `otel` extra is not installed: no traces", ENDPOINT)
        return False
    return True


def instrument(exporter=None) -> None:
    """Trace this process's tasks and provider calls (once per process). ``exporter``: where spans
    go; the OTLP/HTTP exporter (configured by the OTEL_EXPORTER_OTLP_* variables) by default."""
    global _provider, _instrumented_pid
    if _instrumented_pid == os.getpid():
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased

    resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "framefleet"})
    _provider = TracerProvider(resource=resource, sampler=ParentBased(root=_job_traces()))
    _provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)
    CeleryInstrumentor().instrument(tracer_provider=_provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=_provider)
    task_prerun.connect(_label_span, weak=False)  # after the instrumentation's: its span is current
    _instrumented_pid = os.getpid()
    log.info("tracing: spans go to %s", os.environ.get(ENDPOINT, "the given exporter"))


def flush() -> None:
    """Send the spans still buffered (a prefork child ends without running atexit)."""
    if _provider is not None and _instrumented_pid == os.getpid():
        _provider.force_flush(timeout_millis=5000)


def _job_traces():
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class JobTraces(Sampler):
        """Of the spans without a parent, only a create's run starts a trace: a job's."""

        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None) -> SamplingResult:
            decision = Decision.RECORD_AND_SAMPLE if name in ROOT_SPANS else Decision.DROP
            return SamplingResult(decision, attributes if decision is Decision.RECORD_AND_SAMPLE else None)

        def get_description(self) -> str:
            return "JobTraces"

    return JobTraces()


def _label_span(**_) -> None:
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        for name, value in (task_context.get() or {}).items():
            if name in SPAN_ATTRIBUTES:
                span.set_attribute(SPAN_ATTRIBUTES[name], value)


@contextlib.contextmanager
def provider_call(name: str, **attributes: str) -> Iterator[None]:
    """A CLIENT span around a provider call (its error recorded), when this process traces."""
    if _instrumented_pid != os.getpid():
        yield
        return
    from opentelemetry import trace

    with trace.get_tracer(__name__).start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes):
        yield


def job_carrier() -> dict[str, str]:
    """The current trace context (a create's: its job's root) as W3C headers, to keep in the job's
    spec; empty when this process does not trace."""
    if _instrumented_pid != os.getpid():
        return {}
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


@contextlib.contextmanager
def in_job_trace(carrier: Callable[[], dict[str, str]]) -> Iterator[None]:
    """Send messages inside the job's trace: unchanged when the current span already belongs to it
    (a step sending the next), else under the job's root (``carrier``: its spec's context, read
    only when this process traces)."""
    if _instrumented_pid != os.getpid():
        yield
        return
    from opentelemetry import context, trace
    from opentelemetry.propagate import extract

    job_context = extract(carrier() or {})
    job_trace = trace.get_current_span(job_context).get_span_context()
    current = trace.get_current_span().get_span_context()
    if not job_trace.is_valid or current.trace_id == job_trace.trace_id:
        yield
        return
    token = context.attach(job_context)
    try:
        yield
    finally:
        context.detach(token)
