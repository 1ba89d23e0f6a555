"""An OpenTelemetry collector stand-in: OTLP/HTTP (protobuf) on a free loopback port, keeping every span
it receives, as the fleet's workers send them with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing here."""

from __future__ import annotations

import gzip
import threading

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.fakes.http import JsonHandler, StandIn


def _value(any_value) -> object:
    return getattr(any_value, any_value.WhichOneof("value")) if any_value.WhichOneof("value") else None


class FakeCollector(StandIn):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[dict] = []
        super().__init__()

    @property
    def endpoint(self) -> str:
        return self.server.url

    def handle(self, handler: JsonHandler, method: str) -> None:
        if method != "POST" or handler.path != "/v1/traces":
            return handler.send(404, {"error": "not found"})
        body = handler.body()
        if handler.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append({
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(), "name": span.name, "kind": span.kind,
                        "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                        "attributes": {a.key: _value(a.value) for a in span.attributes}, "resource": resource})
        with self.lock:
            self.spans += received
        handler.send(200, raw=ExportTraceServiceResponse().SerializeToString(),
                     content_type="application/x-protobuf")
