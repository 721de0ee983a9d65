"""A python model instance in a process of its own, as Triton's python backend runs every
instance (its "stub process"): `python -m inferd.backends.python_stub CHANNEL_FD DIRECT_FD`,
started by python_process.py with the stub's ends of two socket pairs (stub_channel.py).

The stub runs the same PythonInstance as the server would in-process (or, for an MLServer
model under `--backend-config=mlserver,isolation=process`, the same MLServerInstance). What the
model reaches of the server goes over the channel (stub_channel.py): its calls to other models
and to model control (RemoteCalls), its custom metrics (RemoteMetrics), a decoupled request's
responses (RemoteSink), its log records. Batches come to the main thread on the direct
channel, which runs them one at a time and makes their BLS calls there too (DirectCalls); a
reader thread takes the server's other messages. When the server goes away, the stub exits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import queue
import socket
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from tritonclient.grpc import model_config_pb2

from inferd.backends.base import BackendSettings, Device, InstanceRequest, RequestOutcome
from inferd.backends.python_env import EXECUTION_ENV_PATH
from inferd.backends.python_env import activate as activate_env
from inferd.backends.python_metrics import CustomMetrics, Family, MetricKind, Series
from inferd.backends.stub_channel import (
    Channel,
    ChannelClosed,
    Message,
    Op,
    PackedTensors,
    UnreadableMessage,
    pack_tensors,
    unpack_tensors,
)
from inferd.repository.config import to_model_config
from inferd.repository.mlserver_settings import BACKEND as MLSERVER
from inferd.server.errors import InferdError, internal
from inferd.server.model_calls import StreamAnswer
from inferd.server.types import InferRequest, InferResponse

if TYPE_CHECKING:
    from inferd.server.tracing import Trace

COMPLETE = "complete"  # argv[1] of a stub that completes a config (python_process.py)
# The levels of the root logger and of inferd's package (verbose logging, pb_utils.Logger's
# log_verbose), which the logging extension changes at run time: each batch brings them.
LogLevels = tuple[int, int]


def log_levels() -> LogLevels:
    return logging.getLogger().getEffectiveLevel(), logging.getLogger("inferd").level


def set_log_levels(levels: LogLevels) -> None:
    logging.getLogger().setLevel(levels[0])
    logging.getLogger("inferd").setLevel(levels[1])


@dataclass(frozen=True, slots=True)
class StubInit:
    """What a stub is started with (the first message it receives)."""

    config: bytes  # the model's normalised config, serialised
    model_file: str
    device: Device
    cache_dir: str
    model_calls: bool  # whether the model may call models (BLS, model control)


@dataclass(frozen=True, slots=True)
class TraceHandle:
    """A traced request's trace as a stub knows it (the trace stays in the server): what
    `request.trace()` wraps, and what a BLS request made with it carries back, naming the
    called model, for the server to trace the call as the request's child."""

    handle: int
    context: str | None = None  # the W3C traceparent (OpenTelemetry mode)
    called_model: str = ""

    def traceparent(self) -> str | None:
        return self.context

    def child(self, model_name: str) -> TraceHandle:
        return TraceHandle(self.handle, None, model_name)


# One request as the server sends it: inputs (packed), id, parameters, requested outputs, its
# decoupled response sink (None without one) as its id and whether it holds sends back, and its
# trace (None when not traced).
WireRequest = tuple[
    PackedTensors,
    str,
    Mapping[str, Any],
    "tuple[str, ...] | None",
    "tuple[int, bool] | None",
    "TraceHandle | None",
    Mapping[str, Mapping[str, Any]],  # each input's own parameters
    "Mapping[str, str] | None",  # its headers, for a model that reads them
]


class RemoteSink:
    """A decoupled request's ResponseSink: responses go to the server's sink as they are sent.
    When the server's sink holds sends back, each send waits for it, so that the back-pressure
    reaches the model; otherwise sends do not wait."""

    def __init__(self, channel: Channel, sink_id: int, holds_back: bool) -> None:
        self._channel = channel
        self._id = sink_id
        self._lock = threading.Lock()
        self._closed = False
        self.holds_back = holds_back

    @property
    def cancelled(self) -> bool:
        """Asked of the server each time (the client may leave at any moment)."""
        return bool(self._channel.call(Op.CALL, "cancelled", (self._id,)).result())

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, item: dict[str, np.ndarray] | InferdError | None, final: bool) -> bool:
        sent = pack_tensors(item) if isinstance(item, dict) else item
        with self._lock:
            if self._closed:
                return False
            self._closed = final
            try:
                if self.holds_back:
                    call = self._channel.call(Op.CALL, "send", (self._id, sent, final))
                    return bool(call.result())
                self._channel.send(Op.SEND, self._id, sent, final)
            except ChannelClosed:
                return False
        return True

    def seal(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._channel.send(Op.SEAL, self._id)
        except ChannelClosed:
            return


class RemoteStream:
    """The answers of a streamed BLS call, as the server forwards them."""

    def __init__(self, channel: Channel, stream_id: int) -> None:
        self._channel = channel
        self._id = stream_id
        self.answers: queue.SimpleQueue[StreamAnswer] = queue.SimpleQueue()

    def get(self) -> StreamAnswer:
        return self.answers.get()

    def cancel(self) -> None:
        try:
            self._channel.send(Op.STREAM_CANCEL, self._id)
        except ChannelClosed:
            return


class DirectCalls:
    """BLS calls made by the thread that runs the batches, while it runs one: sent on the
    direct channel, which the server reads on its event loop, and answered there, where this
    thread reads the answer itself. Neither end hands the call or its answer to another
    thread. Batches the server sent early, read meanwhile, wait their turn in `pending`."""

    def __init__(self, direct: Channel) -> None:
        self._direct = direct
        self._thread = threading.get_ident()
        self.pending: collections.deque[Message] = collections.deque()
        self.running = False  # a batch runs: the server reads its calls as they come

    def usable(self, request: InferRequest) -> bool:
        """From the batches' thread during a batch, for a request the server can read (an
        object element of a class only the model imports would not unpickle there)."""
        return (
            self.running
            and threading.get_ident() == self._thread
            and all(_plain(array) for array in request.inputs.values())
        )

    def infer(self, request: InferRequest) -> InferResponse:
        call_id = self._direct.new_id()
        self._direct.send(Op.CALL, call_id, "infer", (request,))
        while True:
            message = self._receive()
            if isinstance(message, UnreadableMessage) and message.head == (Op.REPLY, call_id):
                raise internal(f"the answer of a model call cannot be read here: {message}")
            if isinstance(message, UnreadableMessage) or message[0] != Op.REPLY:
                self.pending.append(message)  # a batch sent early: run after this one
            elif message[1] == call_id:
                _, _, ok, value = message
                if ok:
                    return cast(InferResponse, value)
                raise value

    def next(self) -> Message:
        """The server's next direct message."""
        return self.pending.popleft() if self.pending else self._receive()

    def _receive(self) -> Message:
        try:
            return self._direct.receive()
        except UnreadableMessage as unreadable:
            return unreadable


def _plain(array: np.ndarray) -> bool:
    if type(array) is not np.ndarray:
        return False
    # The element types, gathered in C: about 14 ns an element.
    return array.dtype != object or set(map(type, array.ravel().tolist())) <= _TEXT_TYPES


_TEXT_TYPES = frozenset((bytes, str))


class RemoteCalls:
    """ModelCalls through the server: each call waits for the server's answer."""

    def __init__(self, channel: Channel, direct: DirectCalls | None = None) -> None:
        self._channel = channel
        self._direct = direct
        self._streams: dict[int, RemoteStream] = {}
        self._lock = threading.Lock()

    def _call(self, method: str, *args: Any) -> Any:
        return self._channel.call(Op.CALL, method, args).result()

    def infer(self, request: InferRequest) -> InferResponse:
        if self._direct is not None and self._direct.usable(request):
            return self._direct.infer(request)
        result: InferResponse = self._call("infer", request)
        return result

    async def infer_async(self, request: InferRequest) -> InferResponse:
        result: InferResponse = await asyncio.wrap_future(
            self._channel.call(Op.CALL, "infer", (request,))
        )
        return result

    def stream(self, request: InferRequest) -> RemoteStream:
        stream_id = self._channel.new_id()
        stream = RemoteStream(self._channel, stream_id)
        with self._lock:
            self._streams[stream_id] = stream
        self._channel.send(Op.STREAM, stream_id, request)
        return stream

    def answer(self, stream_id: int, answer: Any, final: bool) -> None:
        """A streamed call's answer came in (reader thread)."""
        with self._lock:
            stream = self._streams.pop(stream_id) if final else self._streams.get(stream_id)
        if stream is not None:
            stream.answers.put((answer, final))

    def load(
        self,
        name: str,
        config: str | None,
        files: Mapping[str, bytes],
        wait: bool = True,
        requested_by: str = "",
    ) -> None:
        self._call("load", name, config, dict(files), wait, requested_by)

    def unload(self, name: str, unload_dependents: bool = False, wait: bool = True) -> None:
        self._call("unload", name, unload_dependents, wait)

    def ready(self, name: str, version: str = "") -> bool:
        return bool(self._call("ready", name, version))


class RemoteMetrics(CustomMetrics):
    """The server's custom metrics registry, seen from the stub: families and metrics are the
    server's, known here by handle; this process keeps stand-ins that name them."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel
        self._handles: dict[int, int] = {}  # id(stand-in) -> the server's handle
        self._stand_ins: list[Family | Series] = []  # alive while handles name them

    def _call(self, method: str, *args: Any) -> Any:
        return self._channel.call(Op.CALL, "metrics", (method, *args)).result()

    def _handle(self, stand_in: Family | Series) -> int:
        return self._handles[id(stand_in)]

    def _keep(self, stand_in: Family | Series, handle: int) -> None:
        self._handles[id(stand_in)] = handle
        self._stand_ins.append(stand_in)

    def family(self, name: str, description: str, kind: int) -> Family:
        handle = self._call("family", name, description, kind)
        family = Family(name, str(description), MetricKind(kind))
        self._keep(family, handle)
        return family

    def metric(
        self,
        family: Family,
        labels: Mapping[str, str] | None,
        buckets: Sequence[float] | None = None,
    ) -> Series:
        labels = None if labels is None else dict(labels)
        buckets = None if buckets is None else list(buckets)
        handle = self._call("metric", self._handle(family), labels, buckets)
        series = Series(family.kind, ())
        self._keep(series, handle)
        return series

    def release(self, family: Family, series: Sequence[Series]) -> None:
        # The server gives the instance's metrics back when the stub closes or dies.
        return

    def increment(self, series: Series, value: float) -> None:
        self._call("increment", self._handle(series), value)

    def set(self, series: Series, value: float) -> None:
        self._call("set", self._handle(series), value)

    def observe(self, series: Series, value: float) -> None:
        self._call("observe", self._handle(series), value)

    def value(self, series: Series) -> float:
        return float(self._call("value", self._handle(series)))


class ForwardLogs(logging.Handler):
    """Log records go to the server's logger of the same name (one log, one format)."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        try:
            self._channel.send(Op.LOG, record.name, record.levelno, text)
        except ChannelClosed:
            return


def _requests(channel: Channel, wire: Sequence[WireRequest]) -> list[InstanceRequest]:
    return [
        InstanceRequest(
            unpack_tensors(inputs),
            request_id,
            parameters,
            outputs,
            None if sink is None else RemoteSink(channel, *sink),
            # The model only asks a trace for its context and children: a handle answers both.
            cast("Trace | None", trace),
            input_parameters,
            headers,
        )
        for inputs, request_id, parameters, outputs, sink, trace, input_parameters, headers in wire
    ]


def _as_error(exc: BaseException) -> InferdError:
    return exc if isinstance(exc, InferdError) else internal(f"{type(exc).__name__}: {exc}")


def _outcome(outcome: RequestOutcome) -> PackedTensors | InferdError:
    return pack_tensors(outcome) if isinstance(outcome, dict) else _as_error(outcome)


def serve(channel: Channel, direct: Channel) -> None:
    """Start the instance the server asks for, then run its batches until CLOSE."""
    init: StubInit
    _, init, levels = channel.receive()  # with the server's log levels of now
    set_log_levels(levels)
    logging.getLogger().addHandler(ForwardLogs(channel))
    direct_calls = DirectCalls(direct)
    calls = RemoteCalls(channel, direct_calls) if init.model_calls else None

    def read() -> None:
        try:
            while True:
                try:
                    op, *args = channel.receive()
                except UnreadableMessage as unreadable:  # a call's answer still ends its wait
                    op, key = unreadable.head or (None, None)
                    error = internal(f"the server's answer cannot be read here: {unreadable}")
                    if op == Op.REPLY:
                        channel.resolve(key, False, error)
                    elif op == Op.STREAM_ANSWER and calls is not None:
                        calls.answer(key, error, True)
                    else:
                        logging.getLogger(__name__).error(
                            "a server message is lost: %s", unreadable
                        )
                    continue
                if op == Op.REPLY:
                    channel.resolve(*args)
                elif op == Op.STREAM_ANSWER and calls is not None:
                    calls.answer(*args)
        except ChannelClosed:
            os._exit(0)  # the server is gone: nothing is left to answer

    threading.Thread(target=read, name="stub-reader", daemon=True).start()
    try:
        instance = _start(init, channel, calls)
    except BaseException as exc:
        channel.send(Op.INIT_DONE, False, _as_error(exc))
        return
    channel.send(Op.INIT_DONE, True, None)
    while True:
        message = direct_calls.next()
        if isinstance(message, UnreadableMessage):  # a batch: it fails, saying why
            error = internal(f"a batch cannot be read in the model's process: {message}")
            direct.send(False, error, channel.sent)
            continue
        op, *args = message
        ok, value = True, cast(Any, None)
        try:
            if op == Op.EXECUTE:
                wire, batch_levels = args
                if batch_levels != levels:
                    levels = batch_levels
                    set_log_levels(levels)
                direct_calls.running = True
                try:
                    outcomes = instance.execute_requests(_requests(channel, wire))
                finally:
                    direct_calls.running = False
                value = [_outcome(o) for o in outcomes]
            else:
                instance.close()
        except BaseException as exc:
            ok, value = False, _as_error(exc)
        # What the batch sent on the channel (decoupled responses) is counted in: the server
        # takes the answer once it has read those.
        direct.send(ok, value, channel.sent)
        if op == Op.CLOSE:
            return


def _start(init: StubInit, channel: Channel, calls: RemoteCalls | None) -> Any:
    from inferd.backends.python import PythonInstance  # which starts stubs: imported late

    proto = model_config_pb2.ModelConfig.FromString(init.config)
    model_file = Path(init.model_file)
    if proto.backend == MLSERVER:  # an MLServer model (its settings file): MLServer's code
        from inferd.backends.mlserver import MLServerBackend, MLServerInstance

        config = to_model_config(proto, MLSERVER, MLServerBackend.schemaless(proto))
        return MLServerInstance(config, model_file, Path(init.cache_dir), env_first=True)
    env = proto.parameters.get(EXECUTION_ENV_PATH)
    if env is not None:  # before model.py is read; an archive is unpacked once, into the cache
        activate_env(env.string_value, model_file.parent.parent, Path(init.cache_dir), first=True)
    config = to_model_config(proto, "python")
    return PythonInstance(config, model_file, init.device, calls, RemoteMetrics(channel))


def complete(given: Path, answer: Path, model_path: Path, cache_dir: Path) -> None:
    """Complete the config in `given` (auto-complete on) and write (ok, config or error)."""
    from inferd.backends.python import complete_here

    proto = model_config_pb2.ModelConfig.FromString(given.read_bytes())
    try:
        complete_here(proto, model_path, BackendSettings(cache_dir=cache_dir), env_first=True)
        result: tuple[bool, Any] = (True, proto.SerializeToString())
    except BaseException as exc:
        result = (False, _as_error(exc))
    answer.write_bytes(pickle.dumps(result))


def main(argv: Sequence[str]) -> int:
    if argv[1] == COMPLETE:
        complete(*map(Path, argv[2:6]))
        return 0
    channel = Channel(socket.socket(fileno=int(argv[1])))
    direct = Channel(socket.socket(fileno=int(argv[2])))
    try:
        serve(channel, direct)
    except ChannelClosed:
        return 0
    finally:
        logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
