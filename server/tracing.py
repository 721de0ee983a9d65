"""Request tracing (Triton's trace extension, mode `triton`): which requests are traced, the
timestamps and tensors collected for them, and the JSON trace files they are written to.

Everything here runs on the event loop: front doors sample and finish traces, the core and
the schedulers stamp them (the schedulers from the timings an instance thread measured).
Timestamps are CLOCK_MONOTONIC nanoseconds, the clock Triton's traces use too.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

import numpy as np
import orjson

from inferd.server.errors import invalid
from inferd.server.trace_settings import TraceLevel, TraceSetting, TraceUpdate, overlay
from inferd.server.types import DataType

if TYPE_CHECKING:
    from inferd.server.otel_export import OtelExporter

log = logging.getLogger(__name__)

Send = TypeVar("Send", bound=Callable[..., None])
# A front door's names for reading a request and sending its answer.
_READ = {"HTTP": "HTTP_RECV", "GRPC": "GRPC_WAITREAD"}


class TraceFile:
    """One trace file: a JSON array of trace entries, valid JSON after every write (Triton's
    stays open until shutdown), and its numbered siblings `<file>.<n>` for log_frequency."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._out: BinaryIO | None = None  # open from the first write of this run on
        self._closed = False  # at shutdown; reopening would start the file afresh
        self._next_index = 0

    def append(self, entries: list[bytes]) -> None:
        """Add entries to the file (started afresh by the first write of this run)."""
        if not entries or self._closed:
            return
        body = b",".join(entries)
        try:
            if self._out is None:
                self._out = open(self.path, "w+b")  # noqa: SIM115 - kept open across writes
                self._out.write(b"[" + body + b"]")
            else:
                self._out.seek(-1, os.SEEK_END)  # over the closing bracket
                self._out.write(b"," + body + b"]")
            self._out.flush()
        except OSError as exc:
            log.error("writing trace file %s failed: %s", self.path, exc)

    def close(self) -> None:
        self._closed = True
        if self._out is not None:
            self._out.close()
            self._out = None

    def write_numbered(self, entries: list[bytes]) -> None:
        path = f"{self.path}.{self._next_index}"
        self._next_index += 1
        try:
            with open(path, "wb") as out:
                out.write(b"[" + b",".join(entries) + b"]")
        except OSError as exc:
            log.error("writing trace file %s failed: %s", path, exc)


class Sampler:
    """Sampling and collection under one effective setting. As in Triton, a new setting counts
    afresh: every `rate`-th request it sees is traced, until `count` traces were taken."""

    def __init__(
        self, setting: TraceSetting, file: TraceFile | None, exporter: OtelExporter | None = None
    ) -> None:
        self.setting = setting
        self.active = not setting.invalid_reason()  # which includes having a file (mode triton)
        self._file = file
        self._exporter = exporter
        self._seen = 0
        self._remaining = setting.count  # -1 = no limit
        self._buffer: list[bytes] = []
        self._buffered = 0  # traces in the buffer
        self.retired = False  # replaced by a newer setting: write what still arrives at once

    def current(self) -> TraceSetting:
        """The setting, with the count of traces it may still take (Triton reports that)."""
        return dataclasses.replace(self.setting, count=self._remaining)

    def sample(self) -> bool:
        if not self.active or self._remaining == 0:
            return False
        self._seen += 1
        if self._seen % self.setting.rate:
            return False
        if self._remaining > 0:
            self._remaining -= 1
        return True

    def finish(self, trace: Trace) -> None:
        """A trace is complete: to the OpenTelemetry exporter, or into the trace file."""
        if self._exporter is not None:
            try:
                self._exporter.export(trace)
            except Exception:  # a tracing fault must never fail a request
                log.exception("exporting an OpenTelemetry trace failed")
            return
        self.collect(list(trace.entries()))

    def collect(self, entries: list[bytes]) -> None:
        """A finished trace's entries."""
        self._buffer.extend(entries)
        self._buffered += 1
        frequency = self.setting.log_frequency
        if self.retired or not frequency or self._buffered >= frequency:
            self.flush()

    def flush(self) -> None:
        """With log_frequency 0, traces go to the trace file as they finish; otherwise every
        `log_frequency` traces (and what is left at the end) make a numbered file."""
        if not self._buffer or self._file is None:
            return
        entries, self._buffer, self._buffered = self._buffer, [], 0
        if self.setting.log_frequency:
            self._file.write_numbered(entries)
        else:
            self._file.append(entries)


class Trace:
    """One traced request (or an ensemble step of one: then `parent_id` is the ensemble's)."""

    __slots__ = (
        "_children",
        "_level",
        "_new_id",
        "_sampler",
        "_tensors",
        "_timestamps",
        "id",
        "model_name",
        "model_version",
        "otel_parent",
        "otel_span_id",
        "otel_trace_id",
        "parent_id",
        "request_id",
    )

    def __init__(
        self,
        trace_id: int,
        model_name: str,
        sampler: Sampler,
        new_id: Iterator[int],
        parent_id: int = 0,
    ) -> None:
        self.id = trace_id
        self.parent_id = parent_id
        self.model_name = model_name
        self.model_version = -1
        self.request_id = ""
        self._level = sampler.setting.level
        self._timestamps: list[tuple[str, int]] = []
        # (activity, record), made when taken: buffers may be reused once answered.
        self._tensors: list[tuple[str, dict[str, str]]] = []
        self._children: list[Trace] = []
        self._new_id = new_id
        self._sampler = sampler
        # OpenTelemetry mode: the client's trace context, if any, and the ids the trace and
        # this request's model span get (known up front, so that model code can pass them on).
        self.otel_parent: Any = None
        self.otel_trace_id = 0
        self.otel_span_id = 0

    @property
    def timestamps(self) -> list[tuple[str, int]]:
        return self._timestamps

    @property
    def children(self) -> list[Trace]:
        """An ensemble's steps, and BLS calls made with this request's trace."""
        return self._children

    def stamp(self, name: str, ns: int) -> None:
        self._timestamps.append((name, ns))

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self._timestamps)

    def child(self, model_name: str) -> Trace:
        """The trace of an ensemble step or a BLS call, written with this one."""
        child = Trace(next(self._new_id), model_name, self._sampler, self._new_id, self.id)
        if self.otel_trace_id:
            child.otel_trace_id = self.otel_trace_id
            child.otel_span_id = _span_id()
        self._children.append(child)
        return child

    def traceparent(self) -> str | None:
        """OpenTelemetry mode: the W3C trace context of this request's model span."""
        if not self.otel_trace_id:
            return None
        return f"00-{self.otel_trace_id:032x}-{self.otel_span_id:016x}-01"

    def started(
        self, version: int, request_id: str, inputs: Mapping[str, np.ndarray], now: int
    ) -> None:
        """The core took the request (REQUEST_START) for this model version."""
        self.model_version = version
        self.request_id = request_id
        self.stamp("REQUEST_START", now)
        if TraceLevel.TENSORS in self._level:
            for name, array in inputs.items():
                self._tensors.append(("TENSOR_QUEUE_INPUT", tensor_entry(name, "", array)))

    def executed(
        self,
        enqueued_ns: int,
        dispatched_ns: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        now: int,
    ) -> None:
        """The batch that held the request ran: its queue and compute timestamps."""
        stamp = self.stamp
        stamp("QUEUE_START", enqueued_ns)
        stamp("COMPUTE_START", dispatched_ns)
        stamp("COMPUTE_INPUT_END", dispatched_ns + input_ns)
        stamp("COMPUTE_OUTPUT_START", dispatched_ns + input_ns + infer_ns)
        stamp("COMPUTE_END", dispatched_ns + input_ns + infer_ns + output_ns)
        stamp("INFER_RESPONSE_COMPLETE", now)
        stamp("REQUEST_END", now)

    def answered(self, outputs: list[tuple[str, DataType, np.ndarray]], now: int) -> None:
        """The response was built (its outputs as sent: name, datatype, array)."""
        if not self.has("REQUEST_END"):  # an ensemble, or an answer from the response cache
            self.stamp("INFER_RESPONSE_COMPLETE", now)
            self.stamp("REQUEST_END", now)
        if TraceLevel.TENSORS in self._level:
            for name, datatype, array in outputs:
                record = tensor_entry(name, datatype.value, array)
                self._tensors.append(("TENSOR_BACKEND_OUTPUT", record))

    def sent(self, protocol: str, start_ns: int) -> None:
        """The answer (or the error), whose sending began at `start_ns`, went out: write the
        trace."""
        now = time.monotonic_ns()
        if not self.has("REQUEST_END") and self.has("REQUEST_START"):  # the request failed
            self.stamp("REQUEST_END", now)
        self.stamp(f"{protocol}_SEND_START", start_ns)
        self.stamp(f"{protocol}_SEND_END", now)
        self._sampler.finish(self)

    def entries(self) -> Iterator[bytes]:
        """The trace as Triton's JSON trace file writes it."""
        header: dict[str, Any] = {
            "id": self.id,
            "model_name": self.model_name,
            "model_version": self.model_version,
        }
        if self.request_id:
            header["request_id"] = self.request_id
        if self.parent_id:
            header["parent_id"] = self.parent_id
        yield orjson.dumps(header)
        if TraceLevel.TIMESTAMPS in self._level:
            for name, ns in self._timestamps:
                yield orjson.dumps({"id": self.id, "timestamps": [{"name": name, "ns": ns}]})
        for activity, record in self._tensors:
            yield orjson.dumps({"id": self.id, "activity": activity, "tensor": record})
        for child in self._children:
            yield from child.entries()


def _span_id() -> int:
    """A random OpenTelemetry span id (never 0, which means none)."""
    return random.getrandbits(64) or 1


def traced(trace: Trace, send: Send, protocol: str, arrival_ns: int) -> Send:
    """`send` (how a front door answers a request: once, on the loop) for a traced request:
    stamps reading the request and sending the answer, then writes the trace."""
    traced_read(trace, protocol, arrival_ns)

    def send_traced(*args: Any) -> None:
        start = time.monotonic_ns()
        try:
            send(*args)
        finally:
            trace.sent(protocol, start)

    return cast(Send, send_traced)


def traced_read(trace: Trace, protocol: str, arrival_ns: int) -> None:
    """Reading the request: from `arrival_ns` (its first bytes) to now."""
    read = _READ[protocol]
    trace.stamp(f"{read}_START", arrival_ns)
    trace.stamp(f"{read}_END", time.monotonic_ns())


def tensor_entry(name: str, datatype: str, array: np.ndarray) -> dict[str, str]:
    """Triton's TENSORS record: the values comma-separated (strings quoted), the shape too."""
    if array.dtype == np.object_:
        values = [
            '"' + (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)) + '"'
            for v in array.ravel()
        ]
    elif array.dtype == np.bool_:
        values = ["1" if v else "0" for v in array.ravel()]
    elif array.dtype.kind == "f":
        values = [format(float(v), "g") for v in array.ravel()]
    else:
        values = [str(v) for v in array.ravel().tolist()]
    if not datatype:  # a request's inputs carry numpy types only
        datatype = DataType.from_numpy(array.dtype).value
    return {
        "name": name,
        "data": ",".join(values),
        "shape": ",".join(str(d) for d in array.shape),
        "dtype": datatype,
    }


class Tracer:
    """The trace settings (global, and per model over the global ones) and their samplers.

    `enabled` is False while no setting can trace: front doors then skip sampling entirely.
    With an OpenTelemetry exporter, a request that carries a `traceparent` is traced whatever
    the rate and count (`propagates`: front doors pass that header)."""

    def __init__(self, defaults: TraceSetting, exporter: OtelExporter | None = None) -> None:
        self._defaults = defaults  # from the command line: what clearing a global key restores
        self._exporter = exporter
        self.propagates = exporter is not None
        self._global: TraceUpdate = {}  # fields set through the API, over the defaults
        self._models: dict[str, TraceUpdate] = {}  # fields set per model, over the global
        self._files: dict[str, TraceFile] = {}
        self._samplers: dict[str, Sampler] = {}  # by model; "" = the global setting
        self._ids = itertools.count(1)
        self.enabled = False
        self._rebuild("")

    def sample(self, model: str, traceparent: str | bytes | None = None) -> Trace | None:
        sampler = self._sampler(model)
        parent = None
        if traceparent and self._exporter is not None and sampler.setting.level:
            if isinstance(traceparent, bytes):
                traceparent = traceparent.decode("latin-1")
            parent = self._exporter.parent(traceparent)
        if parent is None and not sampler.sample():
            return None
        trace = Trace(next(self._ids), model, sampler, self._ids)
        if self._exporter is not None:
            trace.otel_parent = parent
            trace.otel_trace_id = self._exporter.trace_id(parent)
            trace.otel_span_id = _span_id()
        return trace

    def setting(self, model: str = "") -> TraceSetting:
        return self._sampler(model).current()

    def _sampler(self, model: str) -> Sampler:
        return self._samplers.get(model) or self._samplers[""]

    def update(self, model: str, update: TraceUpdate) -> TraceSetting:
        """Apply an update to the global setting (`model` "") or to one model's; returns the
        setting now in force there. Cleared fields fall back to the layer below."""
        current = self._global if not model else self._models.get(model, {})
        layer = {k: v for k, v in {**current, **update}.items() if v is not None}
        base = self._defaults if not model else self._effective("")
        candidate = overlay(base, layer)
        reason = candidate.invalid_reason()
        if reason and candidate.level != TraceLevel.OFF:
            raise invalid(f"Attempting to set invalid trace setting :{reason}")
        if not model:
            self._global = layer
            self._rebuild("")
            for name in self._models:  # models fall back to the global for what they leave out
                self._rebuild(name)
        elif layer:
            self._models[model] = layer
            self._rebuild(model)
        else:
            self._models.pop(model, None)
            self._rebuild(model)
        return self.setting(model)

    def close(self) -> None:
        """Write what is still buffered (numbered files of log_frequency), close the files."""
        for sampler in self._samplers.values():
            sampler.retired = True
            sampler.flush()
        for file in self._files.values():
            file.close()
        if self._exporter is not None:
            self._exporter.close()

    def _effective(self, model: str) -> TraceSetting:
        setting = overlay(self._defaults, self._global)
        return overlay(setting, self._models[model]) if model in self._models else setting

    def _rebuild(self, model: str) -> None:
        """A new sampler where the effective setting changed (one unchanged keeps counting)."""
        old = self._samplers.get(model)
        if model and model not in self._models:
            self._samplers.pop(model, None)
        else:
            setting = self._effective(model)
            if old is None or old.setting != setting:
                file = None if self._exporter is not None else self._file(setting.file)
                self._samplers[model] = Sampler(setting, file, self._exporter)
            else:
                old = None
        if old is not None:
            old.retired = True
            old.flush()
        self.enabled = any(
            s.active or (self.propagates and s.setting.level) for s in self._samplers.values()
        )

    def _file(self, path: str) -> TraceFile | None:
        if not path:
            return None
        file = self._files.get(path)
        if file is None:
            file = self._files[path] = TraceFile(path)
        return file
