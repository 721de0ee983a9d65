"""Python model instances in processes of their own (Triton's stub processes), chosen with
`--backend-config=python,isolation=process` or a model's `inferd.python_isolation` parameter.

Each instance is a child process (python_stub.py) that runs model.py; the server's end here
forwards every batch (sent from and answered on the event loop once a worker attaches the
instance: no server thread per batch), and serves what the model asks of the server: calls to
other models and model control on a small thread pool, custom metrics, decoupled responses, log
records. Instances then run model code in parallel (one GIL each), and a model that crashes its
process fails only its own requests.

When the stub dies, its requests in flight fail with Triton's "Stub process '<instance>' is
not healthy."; the next batch starts a new stub (initialize() again). Triton 2.51 leaves the
instance failing every request until the model is loaded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import numpy as np

from inferd.backends.base import (
    PYTHON_ISOLATIONS,
    BackendSettings,
    Deliver,
    Device,
    InstanceRequest,
    ModelInstance,
    RequestOutcome,
    ResponseSink,
    ServerModelCalls,
    execute_one,
)
from inferd.backends.python_metrics import CustomMetrics, Family, MetricsHolder, Series
from inferd.backends.python_stub import (
    COMPLETE,
    StubInit,
    TraceHandle,
    WireRequest,
    log_levels,
)
from inferd.backends.stub_channel import (
    Channel,
    ChannelClosed,
    FrameReader,
    Message,
    Op,
    UnreadableMessage,
    pack_tensors,
    unpack_tensors,
)
from inferd.repository.config import ModelConfig, ModelConfigProto
from inferd.server.errors import InferdError, internal, invalid, unavailable
from inferd.server.model_calls import AnswerStream
from inferd.server.types import InferRequest

if TYPE_CHECKING:
    from inferd.server.tracing import Trace

log = logging.getLogger(__name__)

ISOLATION_PARAMETER = "inferd.python_isolation"
STUB_MODULE = "inferd.backends.python_stub"
_CLOSE_TIMEOUT_S = 30.0  # finalize() included
_EXIT_TIMEOUT_S = 5.0
_MODEL_CALL_THREADS = 16  # BLS calls and model control a stub may have waiting at once
_MODEL_CALLS = frozenset({"infer", "load", "unload", "ready"})
# A batch sent while the stub still runs the one before it, or a BLS answer sent from the event
# loop: at most this big, so that the few that can wait unread in the socket's buffer never
# fill it (the loop never waits for the stub).
_EARLY_FRAME_BYTES = 32 * 1024


def isolation(config: ModelConfigProto, model_name: str, settings: BackendSettings) -> str:
    """'process' or 'thread': the model's parameter, else the server's setting."""
    parameter = config.parameters.get(ISOLATION_PARAMETER)
    if parameter is None:
        return settings.python_isolation
    if parameter.string_value not in PYTHON_ISOLATIONS:
        raise invalid(
            f"model '{model_name}': parameter '{ISOLATION_PARAMETER}' must be one of "
            f"{', '.join(PYTHON_ISOLATIONS)}, got {parameter.string_value!r}"
        )
    return str(parameter.string_value)


def complete_in_stub(config: ModelConfigProto, model_path: Path, settings: BackendSettings) -> None:
    """The python backend's complete_config() run in a process of its own (as Triton runs
    auto_complete_config() in a stub): model.py and its environment's packages are imported
    there, not in the server. `config` gets the completed config."""
    with tempfile.TemporaryDirectory(prefix="inferd-complete-") as folder:
        given, answer = Path(folder) / "config", Path(folder) / "answer"
        given.write_bytes(config.SerializeToString())
        argv = [COMPLETE, str(given), str(answer), str(model_path), str(settings.cache_dir)]
        done = subprocess.run([sys.executable, "-m", STUB_MODULE, *argv], check=False)
        if not answer.exists():
            raise internal(
                f"{model_path}: the stub process that completes its config exited with code "
                f"{done.returncode}"
            )
        ok, value = pickle.loads(answer.read_bytes())
    if not ok:
        raise value
    config.CopyFrom(type(config).FromString(value))


def not_healthy(instance: str) -> InferdError:
    return internal(f"Stub process '{instance}' is not healthy.")


class StubInstance(ModelInstance):
    """A python model instance whose model runs in a stub process."""

    takes_requests = True
    answers_on_loop = True

    def __init__(
        self,
        config: ModelConfig,
        model_file: Path,
        device: Device,
        settings: BackendSettings,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """`environment`: variables the stub gets beside the server's."""
        self._name = device.name or f"{config.name}_0"
        self._environment = dict(environment or {})
        self._init = StubInit(
            config=config.proto.SerializeToString(),
            model_file=str(model_file),
            device=device,
            cache_dir=str(settings.cache_dir),
            model_calls=settings.model_calls is not None,
        )
        self._calls = settings.model_calls
        self._metrics = settings.custom_metrics or CustomMetrics()
        self._attached: tuple[asyncio.AbstractEventLoop, Deliver] | None = None
        self._stub = self._start()

    def _start(self) -> Stub:
        return Stub(self._name, self._init, self._calls, self._metrics, self._environment)

    @property
    def pid(self) -> int:
        """The stub's process id (tests, diagnostics)."""
        return self._stub.pid

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return execute_one(self, inputs)

    def execute_requests(self, requests: Sequence[InstanceRequest]) -> list[RequestOutcome]:
        assert self._attached is None, "an attached instance's answers are read on the loop"
        stub = self._live_stub()
        handover = stub.begin(requests)
        assert handover is not None
        return stub.end(handover)

    def attach(self, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        self._attached = (loop, deliver)
        self._stub.attach(loop, deliver)

    def begin_requests(
        self, requests: Sequence[InstanceRequest], job: Any, early: bool = False
    ) -> bool:
        if early:  # on the loop: never a restart there, nor a send that may wait
            stub = self._stub
            return stub.alive and stub.begin(requests, job, early=True) is not None
        self._live_stub().begin(requests, job)
        return True

    def _live_stub(self) -> Stub:
        """The stub, started again first when the last one died (on the instance's thread)."""
        if not self._stub.alive:
            log.warning("model instance '%s': starting its stub process again", self._name)
            self._stub.close()  # what is left of it: its sockets
            self._stub = self._start()
            if self._attached is not None:
                self._stub.attach(*self._attached)
        return self._stub

    def close(self) -> None:
        self._stub.close()


class StubMetrics:
    """A stub's custom metrics in the server's registry, named by handles across the wire;
    all given back when the stub ends."""

    def __init__(self, registry: CustomMetrics) -> None:
        self._registry = registry
        self._holder = MetricsHolder(registry)
        self._objects: dict[int, Family | Series] = {}

    def serve(self, method: str, *args: Any) -> Any:
        if method == "family":
            return self._handle(self._holder.family(*args))
        if method == "metric":
            family, labels, buckets = args
            made = self._objects[family]
            assert isinstance(made, Family)
            return self._handle(self._holder.metric(made, labels, buckets))
        if method in ("increment", "set", "observe", "value"):
            series = self._objects[args[0]]
            assert isinstance(series, Series)
            return getattr(self._registry, method)(series, *args[1:])
        raise internal(f"unknown metrics call '{method}'")

    def _handle(self, made: Family | Series) -> int:
        self._objects[id(made)] = made
        return id(made)

    def release(self) -> None:
        self._holder.release()
        self._objects.clear()


@dataclass(slots=True)
class Handover:
    """A batch sent to a stub: what its answer must clean up."""

    job: Any = None  # what deliver() is given with its outcome (attached stubs)
    sink_ids: list[int] = field(default_factory=list)  # its decoupled requests' streams
    traces: list[int] = field(default_factory=list)  # its traced requests' handles
    lost: bool = False  # the stub was gone before it could be sent


class Stub:
    """The server's end of one stub process."""

    def __init__(
        self,
        name: str,
        init: StubInit,
        calls: ServerModelCalls | None,
        metrics: CustomMetrics,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self._name = name
        self._calls = calls
        self._metrics = StubMetrics(metrics)
        self._sinks: dict[int, ResponseSink] = {}
        self._streams: dict[int, AnswerStream] = {}
        # The traces of the requests in the stub, for the BLS calls they make: a batch's, until
        # it returns; a decoupled request's, until its final response.
        self._traces: dict[int, Trace] = {}
        self._sink_traces: dict[int, int] = {}
        self._lock = threading.Lock()
        self._started: Future[None] = Future()
        self._pool: ThreadPoolExecutor | None = None
        self._closing = False
        self.alive = True
        # Channel messages read so far: a batch's answer waits for those it counts.
        self._read_count = 0
        self._read_more = threading.Condition()
        # Attached (attach()): the batches' answers are read on the event loop, and each goes
        # to deliver(job, outcomes or error) in the order the batches were sent.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Deliver | None = None
        self._sent: deque[Handover] = deque()  # sent, not answered yet
        self._order = threading.Lock()  # a batch joins _sent as it is sent
        self._answers = FrameReader()
        self._reading = False  # the loop reads the answers (until _detach())
        self._detached = False  # for good: what is sent now is answered as lost
        # Answers read before the channel messages they count (under _read_more).
        self._parked: deque[tuple[bool, Any, int]] = deque()
        self._given = 0  # the channel messages counted by the answers given so far
        self._deferred = 0  # answers given to a later loop turn, not delivered yet
        ours, theirs = socket.socketpair()
        ours_direct, theirs_direct = socket.socketpair()
        fds = (theirs.fileno(), theirs_direct.fileno())
        try:
            # A session of its own: a terminal's Ctrl-C reaches the server, which closes it.
            self._process = subprocess.Popen(
                [sys.executable, "-m", STUB_MODULE, *map(str, fds)],
                pass_fds=fds,
                start_new_session=True,
                env={**os.environ, **environment} if environment else None,
            )
        finally:
            theirs.close()
            theirs_direct.close()
        self.pid = self._process.pid
        self._channel = Channel(ours)
        self._direct = Channel(ours_direct)
        self._reader = threading.Thread(target=self._read, name=f"{name}-stub", daemon=True)
        self._reader.start()
        try:
            self._channel.send(Op.INIT, init, log_levels())
            self._started.result()
        except BaseException:
            self._end()
            raise

    # ---- the server's calls --------------------------------------------------------------

    def begin(
        self, requests: Sequence[InstanceRequest], job: Any = None, early: bool = False
    ) -> Handover | None:
        """Send a batch to the stub, which runs it after those sent before. Its outcomes go
        to deliver() with `job` when attached, else end() collects them, in the same order.
        An early one is sent only when its frame is small enough never to wait for the stub
        to read it (None otherwise): it is sent from the loop's thread, maybe while the stub
        still runs the batch before it."""
        wire: list[WireRequest] = []
        handover = Handover(job)
        with self._lock:
            for request in requests:
                sink = trace = None
                if request.responses is not None:
                    sink = (id(request.responses), request.responses.holds_back)
                    self._sinks[sink[0]] = request.responses
                    handover.sink_ids.append(sink[0])
                if request.trace is not None:
                    trace = TraceHandle(id(request.trace), request.trace.traceparent())
                    self._traces[trace.handle] = request.trace
                    if sink is None:
                        handover.traces.append(trace.handle)
                    else:
                        self._sink_traces[sink[0]] = trace.handle
                inputs, parameters = pack_tensors(request.inputs), dict(request.parameters)
                wire.append(
                    (
                        inputs,
                        request.id,
                        parameters,
                        request.outputs,
                        sink,
                        trace,
                        request.input_parameters,
                        request.headers,
                    )
                )
        with self._order:
            attached = self._loop is not None
            if attached:  # before it is sent: its answer may come at once
                self._sent.append(handover)
            try:
                if self._detached:
                    raise ChannelClosed
                if not early:
                    self._direct.send(Op.EXECUTE, wire, log_levels())
                elif not self._direct.send_small(
                    _EARLY_FRAME_BYTES, Op.EXECUTE, wire, log_levels()
                ):
                    self._unsent(handover, attached)
                    return None
            except ChannelClosed:
                handover.lost = True
            except BaseException:  # not sent (a parameter that does not pickle): no answer
                self._unsent(handover, attached)
                raise
            if handover.lost and attached and self._detached:  # nobody fails it later
                self._sent.remove(handover)
                self._forget(handover)
                assert self._loop is not None and self._deliver is not None
                self._loop.call_soon_threadsafe(self._deliver, job, not_healthy(self._name))
        return handover

    def _unsent(self, handover: Handover, attached: bool) -> None:
        if attached:
            self._sent.pop()
        self._forget(handover)

    def attach(self, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        """Read the batches' answers on `loop` from now on (from any thread; none may be
        outstanding)."""
        self._loop, self._deliver = loop, deliver
        loop.call_soon_threadsafe(self._start_reading)

    def _start_reading(self) -> None:
        if not self._detached:
            assert self._loop is not None
            self._direct.add_reader(self._loop, self._readable)
            self._reading = True

    def _readable(self) -> None:
        """On the loop: what the stub answered."""
        got = self._answers.read(self._direct)
        if got is None:
            return
        answers, ended = got
        if ended:  # it exited: _died() detaches, which fails what it left unanswered
            self._stop_reading()
        for answer in answers:
            if _is_call(answer):  # a BLS call of the running batch (DirectCalls)
                if isinstance(answer, UnreadableMessage):
                    self._unreadable(self._direct, answer)
                    continue
                _, call_id, method, args = answer
                if method == "infer" and self._calls is not None:
                    self._serve_infer(self._direct, call_id, args)
                else:
                    error = internal(f"a model cannot call '{method}' here")
                    self._answer_now(self._direct, call_id, error)
                continue
            ok, value, sent = self._readable_answer(answer)
            with self._read_more:
                if self._parked or self._read_count < sent:
                    self._parked.append((ok, value, sent))
                    continue
            self._give(ok, value, sent)

    def _readable_answer(self, answer: Message) -> tuple[Any, ...]:
        """(ok, value, channel messages counted) of an answer, or of one that did not unpickle
        here: its batch fails, saying why, and waits for no channel message."""
        if not isinstance(answer, UnreadableMessage):
            return answer
        error = internal(
            f"model instance '{self._name}': its answer cannot be read in the server: {answer}"
        )
        return False, error, self._given

    def _unpark(self) -> None:
        """On the loop: the channel messages that parked answers count have been read."""
        while True:
            with self._read_more:
                if not self._parked or (self.alive and self._read_count < self._parked[0][2]):
                    return
                ok, value, sent = self._parked.popleft()
            self._give(ok, value, sent)

    def _give(self, ok: bool, value: Any, sent: int) -> None:
        """On the loop: the answer of the batch sent longest ago, to deliver()."""
        assert self._loop is not None and self._deliver is not None
        handover = self._sent.popleft()
        if ok:
            value = _unpacked_outcomes(value)
            with self._lock:
                for handle in handover.traces:
                    self._traces.pop(handle, None)
        else:
            self._forget(handover)  # the scheduler ends these requests' streams with the error
        if sent == self._given and not self._deferred:
            self._deliver(handover.job, value)
        else:  # behind what the reader thread passed on from the channel meanwhile
            self._given = sent
            self._defer(handover.job, value)

    def _defer(self, job: Any, outcome: Any) -> None:
        """deliver() in a later loop turn, behind the callbacks already queued."""
        assert self._loop is not None
        self._deferred += 1
        self._loop.call_soon(self._give_deferred, job, outcome)

    def _give_deferred(self, job: Any, outcome: Any) -> None:
        self._deferred -= 1
        assert self._deliver is not None
        self._deliver(job, outcome)

    def _stop_reading(self) -> None:
        if self._reading:
            assert self._loop is not None
            self._loop.remove_reader(self._direct.fileno())
            self._reading = False

    def _detach(self, done: threading.Event | None = None) -> None:
        """On the loop: stop reading answers. A dead stub's last answers are in the socket:
        they are delivered, then every batch it left unanswered fails."""
        try:
            while self._reading and not self.alive:
                got = self._answers.read(self._direct)
                if got is None:  # nothing more has arrived
                    break
                answers, ended = got
                with self._read_more:  # calls of a dead stub: nobody waits for their answer
                    readable = (a for a in answers if not _is_call(a))
                    self._parked.extend(map(self._readable_answer, readable))
                if ended:
                    break
            self._stop_reading()
            self._unpark()  # all of them: the stub is gone (or has nothing outstanding)
            with self._order:
                self._detached = True
                lost, self._sent = list(self._sent), deque()
            error = not_healthy(self._name)
            for handover in lost:
                self._forget(handover)
                self._defer(handover.job, error)
        finally:
            if done is not None:
                done.set()

    def _detach_from_thread(self) -> None:
        """_detach() on the loop, waited for (off the loop)."""
        loop = self._loop
        if loop is None:
            return
        if not loop.is_running():  # nobody reads on it meanwhile (its owner has stopped it)
            with contextlib.suppress(RuntimeError):  # closed: nothing to remove the reader from
                self._detach()
            return
        done = threading.Event()
        try:
            loop.call_soon_threadsafe(self._detach, done)
        except RuntimeError:  # closed since
            return
        done.wait(_EXIT_TIMEOUT_S)

    def end(self, handover: Handover) -> list[RequestOutcome]:
        """The outcomes of the batch begun longest ago; its error raised when it failed."""
        try:
            if handover.lost:
                raise ChannelClosed
            message = self._receive_direct()
            while _is_call(message):  # a BLS call of the batch: answered from a thread
                if isinstance(message, UnreadableMessage):
                    self._unreadable(self._direct, message)
                else:
                    _, call_id, method, args = message
                    call = partial(self._call, method, args)
                    self._model_call_pool().submit(self._answer, self._direct, call_id, call)
                message = self._receive_direct()
            ok, value, sent = self._readable_answer(message)
        except ChannelClosed:
            self.alive = False
            self._reader.join(_EXIT_TIMEOUT_S)  # its end is handled (_died) before we go on
            ok, value, sent = False, not_healthy(self._name), 0
        if self._read_count < sent:
            # What the batch sent on the channel (decoupled responses, log records) is passed
            # on before its answer: a request's log lines come before its response, under the
            # log settings of its time.
            with self._read_more:
                self._read_more.wait_for(lambda: self._read_count >= sent or not self.alive)
        if ok:
            with self._lock:
                for handle in handover.traces:
                    self._traces.pop(handle, None)
            return _unpacked_outcomes(value)
        self._forget(handover)  # the scheduler ends these requests' streams with the error
        raise value

    def _forget(self, handover: Handover) -> None:
        with self._lock:
            for handle in handover.traces:
                self._traces.pop(handle, None)
            for sink_id in handover.sink_ids:
                self._forget_sink(sink_id)

    def _forget_sink(self, sink_id: int) -> ResponseSink | None:
        """The sink and the trace of a request whose stream ended (under the lock)."""
        handle = self._sink_traces.pop(sink_id, None)
        if handle is not None:
            self._traces.pop(handle, None)
        return self._sinks.pop(sink_id, None)

    def _receive_direct(self) -> Message:
        try:
            return self._direct.receive()
        except UnreadableMessage as unreadable:
            return unreadable

    def _ask(self, op: str, *args: Any, timeout: float | None = None) -> tuple[Any, ...]:
        """Send a direct message and read its answer; ChannelClosed when the stub is gone."""
        try:
            self._direct.send(op, *args)
            return self._direct.receive(timeout)
        except UnreadableMessage as unreadable:
            return self._readable_answer(unreadable)
        except ChannelClosed:
            self.alive = False
            self._reader.join(_EXIT_TIMEOUT_S)  # its end is handled (_died) before we go on
            raise

    def close(self) -> None:
        """finalize() and the end of the process; raises finalize()'s failure."""
        self._closing = True
        self._detach_from_thread()  # CLOSE is answered here
        ok, value = True, cast(Any, None)
        try:
            if self.alive:
                ok, value, _ = self._ask(Op.CLOSE, timeout=_CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("model instance '%s': its stub did not close in time", self._name)
        except ChannelClosed:
            pass  # it is gone already
        finally:
            self._end()
        if not ok:
            raise value

    def _end(self) -> None:
        self._closing = True
        try:
            self._process.wait(_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._channel.close()
        self._direct.close()
        self._reader.join(_EXIT_TIMEOUT_S)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- what the stub sends -------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                try:
                    self._dispatch(*self._channel.receive())
                except ChannelClosed:
                    raise
                except UnreadableMessage as exc:  # counted all the same: the stub sent it
                    self._unreadable(self._channel, exc)
                except Exception:  # a bug here must not end the instance's reader
                    log.exception("model instance '%s': a stub message failed", self._name)
                with self._read_more:
                    self._read_count += 1
                    self._read_more.notify_all()
                    if self._parked and self._read_count >= self._parked[0][2]:
                        self._on_loop(self._unpark)
        except ChannelClosed:
            self._died()

    def _on_loop(self, callback: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed (process exit): nobody waits any more
            return

    def _dispatch(self, op: str, *args: Any) -> None:
        if op == Op.REPLY:
            self._channel.resolve(*args)
        elif op == Op.SEND:
            self._send(*args)
        elif op == Op.SEAL:
            with self._lock:
                sink = self._forget_sink(args[0])
            if sink is not None:
                sink.seal()
        elif op == Op.CALL:
            self._serve_call(*args)
        elif op == Op.STREAM:
            threading.Thread(
                target=self._serve_stream, args=args, name=f"{self._name}-bls", daemon=True
            ).start()
        elif op == Op.STREAM_CANCEL:
            stream = self._streams.get(args[0])
            if stream is not None:
                stream.cancel()
        elif op == Op.LOG:
            name, level, text = args
            logging.getLogger(name).log(level, "%s", text)
        elif op == Op.INIT_DONE:
            ok, error = args
            if ok:
                self._started.set_result(None)
            else:
                self._started.set_exception(error)
        else:
            log.error("model instance '%s': unknown stub message '%s'", self._name, op)

    def _unreadable(self, channel: Channel, message: UnreadableMessage) -> None:
        """A stub message that does not unpickle here: a call, a streamed call or a response
        among them is answered (or ended) with why; anything else is only logged."""
        op, key = message.head or (None, None)
        why = f"model instance '{self._name}': what it sent cannot be read in the server: {message}"
        if op == Op.CALL:  # the model's call is what is wrong: it gets INVALID_ARG
            self._reply(channel, key, False, invalid(why))
        elif op == Op.STREAM:
            with contextlib.suppress(ChannelClosed):
                channel.send(Op.STREAM_ANSWER, key, invalid(why), True)
        elif op == Op.SEND:  # a response: its client did nothing wrong
            self._send(key, internal(why), True)
        else:
            log.error("model instance '%s': a stub message cannot be read: %s", self._name, message)

    def _send(self, sink_id: int, item: Any, final: bool) -> bool:
        if isinstance(item, dict):
            item = unpack_tensors(item)
        with self._lock:
            sink = self._forget_sink(sink_id) if final else self._sinks.get(sink_id)
        return sink is not None and sink.send(item, final)

    def _serve_call(self, call_id: int, method: str, args: tuple[Any, ...]) -> None:
        if method == "cancelled":  # answered here: it must not wait behind model calls
            with self._lock:
                sink = self._sinks.get(args[0])
            self._channel.reply(call_id, True, sink is not None and sink.cancelled)
        elif method == "metrics":
            self._answer(self._channel, call_id, lambda: self._metrics.serve(*args))
        elif method == "send":  # a sink that holds sends back: waits off the reader thread
            send = partial(self._send, *args)
            self._model_call_pool().submit(self._answer, self._channel, call_id, send)
        elif method == "infer" and self._calls is not None and self._loop is not None:
            # On the loop, answered from there: no model-call thread waits for the answer (a
            # thread hop each way, about a fifth of a small BLS call's cost).
            try:
                self._loop.call_soon_threadsafe(self._serve_infer, self._channel, call_id, args)
            except RuntimeError:  # the loop has closed
                self._reply(self._channel, call_id, False, _STOPPING)
        elif method in _MODEL_CALLS and self._calls is not None:
            # infer before the loop reads answers (initialize())
            call = partial(self._call, method, args)
            self._model_call_pool().submit(self._answer, self._channel, call_id, call)
        else:
            self._channel.reply(call_id, False, internal(f"a model cannot call '{method}' here"))

    def _serve_infer(self, channel: Channel, call_id: int, args: tuple[Any, ...]) -> None:
        """On the loop: a BLS call (from the channel, or from the direct one, where the thread
        that runs the stub's batch reads the answer itself), submitted from here and answered
        as the called model resolves it, on the channel it came on."""
        assert self._calls is not None
        self._calls.infer_now(self._traced(args[0]), partial(self._answer_now, channel, call_id))

    def _answer_now(self, channel: Channel, call_id: int, outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            stopped = isinstance(outcome, asyncio.CancelledError)  # the server is stopping
            ok, value = False, _STOPPING if stopped else _call_error(outcome)
        else:
            ok, value = True, outcome
        self._send_answer(channel, call_id, ok, value)

    def _call(self, method: str, args: tuple[Any, ...]) -> Any:
        """A model call, from a model-call thread."""
        if self._calls is None or method not in _MODEL_CALLS:
            raise internal(f"a model cannot call '{method}' here")
        if method == "infer":
            args = (self._traced(args[0]),)
        return getattr(self._calls, method)(*args)

    def _answer(self, channel: Channel, call_id: int, run: Any) -> None:
        try:
            value = run()
        except Exception as exc:
            ok, value = False, _call_error(exc)
        else:
            ok = True
        self._reply(channel, call_id, ok, value)

    def _send_answer(self, channel: Channel, call_id: int, ok: bool, value: Any) -> None:
        """An answer sent from here (the loop) when it is small, else from a model-call
        thread (a big one may wait for the stub to read it)."""
        try:
            if channel.send_small(_EARLY_FRAME_BYTES, Op.REPLY, call_id, ok, value):
                return
        except ChannelClosed:
            return
        self._model_call_pool().submit(self._reply, channel, call_id, ok, value)

    def _reply(self, channel: Channel, call_id: int, ok: bool, value: Any) -> None:
        try:
            channel.reply(call_id, ok, value)
        except ChannelClosed:
            return

    def _traced(self, request: InferRequest) -> InferRequest:
        """A BLS request made with a traced request's trace is traced as its child."""
        marker: Any = request.trace
        if isinstance(marker, TraceHandle):
            with self._lock:
                trace = self._traces.get(marker.handle)
            request.trace = None if trace is None else trace.child(marker.called_model)
        return request

    def _model_call_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:  # the reader thread, the loop and the instance's thread ask
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(_MODEL_CALL_THREADS, f"{self._name}-calls")
        return self._pool

    def _serve_stream(self, stream_id: int, request: Any) -> None:
        """A streamed BLS call: its answers go to the stub as they come."""
        if self._calls is None:
            self._channel.send(Op.STREAM_ANSWER, stream_id, internal("no model calls here"), True)
            return
        try:
            stream = self._calls.stream(self._traced(request))
        except InferdError as error:
            self._channel.send(Op.STREAM_ANSWER, stream_id, error, True)
            return
        self._streams[stream_id] = stream
        try:
            final = False
            while not final:
                answer, final = stream.get()
                self._channel.send(Op.STREAM_ANSWER, stream_id, answer, final)
        except ChannelClosed:
            stream.cancel()
        finally:
            self._streams.pop(stream_id, None)

    def _died(self) -> None:
        """The stub's end of the channel closed: it exited (or closed it, then exits)."""
        self.alive = False
        try:
            code = self._process.wait(_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        error = not_healthy(self._name)
        if not self._started.done():
            self._started.set_exception(
                internal(f"Stub process '{self._name}' exited with code {code} while starting")
            )
        elif not self._closing:
            log.error("model instance '%s': its stub process exited with code %s", self._name, code)
        self._channel.fail_calls(error)
        with self._lock:
            sinks, self._sinks = self._sinks, {}
            self._traces.clear()
            self._sink_traces.clear()
        for sink in sinks.values():
            sink.send(error, True)
        for stream in list(self._streams.values()):
            stream.cancel()
        self._metrics.release()
        with self._read_more:  # a batch waiting for its responses waits no more
            self._read_more.notify_all()
        if self._loop is not None:
            self._on_loop(self._detach)


def _is_call(message: object) -> TypeGuard[tuple[Any, ...] | UnreadableMessage]:
    """A model call on the direct channel, beside the batches' answers ((ok, ...) tuples),
    or one that does not unpickle here."""
    head = message.head if isinstance(message, UnreadableMessage) else message
    return type(head) is tuple and len(head) > 0 and head[0] == Op.CALL


def _unpacked_outcomes(outcomes: list[Any]) -> list[RequestOutcome]:
    """A batch's answer as the stub sent it: each request's outputs (packed) or error."""
    return [unpack_tensors(o) if isinstance(o, dict) else o for o in outcomes]


_STOPPING = unavailable("the server is stopping")


def _call_error(exc: BaseException) -> BaseException:
    """What a failed model call answers the stub (these pickle whole, and say what failed)."""
    return exc if isinstance(exc, InferdError | ValueError) else internal(str(exc))
