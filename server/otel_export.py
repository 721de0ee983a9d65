"""Triton's OpenTelemetry trace mode (`--trace-config mode=opentelemetry`): each finished
trace becomes spans exported over OTLP/HTTP, as Triton makes them:

- `InferRequest`, the root: the front door's events (HTTP_RECV_START/END or
  GRPC_WAITREAD_START/END, INFER_RESPONSE_COMPLETE, HTTP/GRPC_SEND_START/END);
- a span named after the model, its child: REQUEST_START, QUEUE_START, REQUEST_END, with the
  attributes triton.model_name, triton.model_version, triton.trace_id, triton.trace_parent_id
  and triton.request_id (when the request has an id);
- `compute`, the model span's child: COMPUTE_START, COMPUTE_INPUT_END, COMPUTE_OUTPUT_START,
  COMPUTE_END;
- an ensemble's steps: a model span each (with its compute span) under the ensemble's.

A request whose `traceparent` header (W3C trace context) is valid continues that trace, and is
traced whatever the rate and count say, as in Triton. Timestamps are taken on the monotonic
clock and exported on the wall clock. Imported only in that mode: the opentelemetry packages
come with the `otel` extra (settings: otel_trace.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from inferd.server.otel_trace import OtelSettings

if TYPE_CHECKING:
    from inferd.server.tracing import Trace

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 3.0  # for the last spans at shutdown
DEFAULT_SERVICE = "triton-inference-server"  # Triton's service.name, kept for dashboards
ROOT_SPAN = "InferRequest"
COMPUTE_SPAN = "compute"
_MODEL_EVENTS = frozenset({"REQUEST_START", "QUEUE_START", "REQUEST_END"})
_COMPUTE_EVENTS = frozenset(
    {"COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"}
)


class OtelExporter:
    """The spans' way out: an OTLP/HTTP exporter behind a batch span processor, on the
    SDK's own thread (exporting never blocks the event loop)."""

    def __init__(self, settings: OtelSettings) -> None:
        attributes: dict[str, str] = {"service.name": DEFAULT_SERVICE}
        attributes.update(_env_resource(os.environ))
        attributes.update(settings.resource)
        bsp = dict(settings.bsp)
        processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=settings.url),
            max_queue_size=bsp.get("bsp_max_queue_size"),
            schedule_delay_millis=bsp.get("bsp_schedule_delay"),
            max_export_batch_size=bsp.get("bsp_max_export_batch_size"),
        )
        self._ids = PresetIds()
        self._provider = TracerProvider(
            resource=Resource.create(attributes), id_generator=self._ids
        )
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("inferd")
        self._propagator = TraceContextTextMapPropagator()
        self._url = settings.url
        log.info("OpenTelemetry traces go to %s", settings.url)

    def parent(self, traceparent: str) -> Any | None:
        """The context a `traceparent` header continues, or None when it is not valid."""
        context = self._propagator.extract({"traceparent": traceparent})
        if not trace.get_current_span(context).get_span_context().is_valid:
            return None
        return context

    def trace_id(self, parent: Any | None) -> int:
        """The trace id a new trace gets: its parent context's, or a new one."""
        if parent is not None:
            return int(trace.get_current_span(parent).get_span_context().trace_id)
        return int(self._ids.random.generate_trace_id())

    def export(self, finished: Trace) -> None:
        """Turn a finished trace into spans (ended, so the processor ships them)."""
        offset = time.time_ns() - time.monotonic_ns()  # monotonic -> wall clock
        stamps = finished.timestamps
        root_stamps = [(n, ns) for n, ns in stamps if n not in _MODEL_EVENTS | _COMPUTE_EVENTS]
        self._ids.trace_id = finished.otel_trace_id  # used when the root starts a trace
        root = self._span(ROOT_SPAN, root_stamps, offset, finished.otel_parent)
        self._ids.trace_id = 0
        self._model_spans(finished, trace.set_span_in_context(root), offset)
        _end(root, root_stamps, offset)

    def _model_spans(self, finished: Trace, context: Any, offset: int) -> None:
        stamps = finished.timestamps
        model_stamps = [(n, ns) for n, ns in stamps if n in _MODEL_EVENTS]
        if not model_stamps:
            return
        attributes: dict[str, str | int] = {
            "triton.model_name": finished.model_name,
            "triton.model_version": finished.model_version,
            "triton.trace_id": finished.id,
            "triton.trace_parent_id": finished.parent_id,
        }
        if finished.request_id:
            attributes["triton.request_id"] = finished.request_id
        self._ids.span_id = finished.otel_span_id  # the id model code was told (traceparent)
        span = self._span(finished.model_name, model_stamps, offset, context, attributes)
        inner = trace.set_span_in_context(span)
        compute_stamps = [(n, ns) for n, ns in stamps if n in _COMPUTE_EVENTS]
        if compute_stamps:
            compute = self._span(COMPUTE_SPAN, compute_stamps, offset, inner)
            _end(compute, compute_stamps, offset)
        for child in finished.children:
            self._model_spans(child, inner, offset)
        _end(span, model_stamps, offset)

    def _span(
        self,
        name: str,
        stamps: Sequence[tuple[str, int]],
        offset: int,
        context: Any,
        attributes: Mapping[str, str | int] | None = None,
    ) -> Any:
        start = min((ns for _, ns in stamps), default=time.monotonic_ns())
        span = self._tracer.start_span(
            name,
            context=context,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=start + offset,
        )
        for event, ns in stamps:
            span.add_event(event, timestamp=ns + offset)
        return span

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Ship what is queued, then stop the processor's thread, within `timeout_s`: a
        collector that is down or stalls does not hold the server's exit (the spans it did
        not take are dropped, and the log says so)."""
        closing = threading.Thread(
            target=self._provider.shutdown, name="otel-shutdown", daemon=True
        )
        closing.start()
        closing.join(timeout_s)
        if closing.is_alive():
            log.warning(
                "OpenTelemetry: %s did not take the last spans within %g s; they are dropped",
                self._url,
                timeout_s,
            )


def _end(span: Any, stamps: Iterable[tuple[str, int]], offset: int) -> None:
    end = max((ns for _, ns in stamps), default=time.monotonic_ns())
    span.end(end_time=end + offset)


def _env_resource(environ: Mapping[str, str]) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES (key=value,...), which Triton honours too (the SDK's
    Resource.create reads it as well; read here so the flags can override it)."""
    pairs = (item.partition("=") for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","))
    return {k.strip(): v.strip() for k, eq, v in pairs if eq and k.strip()}


class PresetIds(IdGenerator):
    """Hands out the ids set on it once each (the trace's and the model span's, chosen when
    the request was sampled), random ones otherwise. Spans are made on the event loop only,
    one trace at a time."""

    def __init__(self) -> None:
        self.random = RandomIdGenerator()
        self.trace_id = 0
        self.span_id = 0

    def generate_span_id(self) -> int:
        preset, self.span_id = self.span_id, 0
        return preset or int(self.random.generate_span_id())

    def generate_trace_id(self) -> int:
        preset, self.trace_id = self.trace_id, 0
        return preset or int(self.random.generate_trace_id())
