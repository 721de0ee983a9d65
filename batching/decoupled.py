"""Decoupled models (Triton's `model_transaction_policy { decoupled: true }`): a request gets
0..n responses, sent by the model from any thread, during or after its `execute()`.

A decoupled request still goes through its model's scheduler like any other (queue, batching,
instance threads, statistics): the scheduler's future ends when `execute()` returns, which frees
the instance. Its responses travel separately, through the request's `ResponseStream`: each one
is handed to the event loop with one `call_soon_threadsafe`, under a lock so that the loop sees
them in send order. The stream ends with the final flag (Triton's
TRITONSERVER_RESPONSE_COMPLETE_FINAL), which may ride on the last response or come alone.

The model's scheduler (the dynamic batcher, or the sequence batcher of a stateful decoupled
model) holds the requests' `OpenStreams`, chosen once at load time: the core refuses requests
that come without a stream (HTTP infer, gRPC ModelInfer, ensembles, BLS exec() without
decoupled=True: Triton refuses them too), and unload waits for open streams before it frees the
instances. An MLServer model's scheduler holds them too, without refusing: its requests may
stream (predict_stream()) or not (predict()).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from inferd.batching.scheduler import Outputs
from inferd.server.errors import ErrorCode, InferdError, unavailable
from inferd.server.types import InferRequest

log = logging.getLogger(__name__)

# What a response stream hands the front door: outputs, an error, or None (a final flag that
# came without a response); and whether it is the request's last.
StreamItem = Outputs | InferdError | None
OnResponse = Callable[[StreamItem, bool], None]

# Responses of one stream handed to the loop and not yet taken on by it: past this, a model
# sending faster than the loop takes them waits (its own thread only), so that a busy loop's
# queue cannot grow without bound. The front doors bound what waits for slow clients.
MAX_UNDELIVERED = 128


class SendCredits:
    """Back-pressure on a decoupled model's sends: each send takes a credit, waiting while
    there is none; the consumer of the responses gives them back as it takes them on (an
    ensemble whose later steps are full holds them). Once `open`, nothing waits."""

    def __init__(self, credits: int) -> None:
        self._changed = threading.Condition()
        self._credits = credits
        self._open = False

    def take(self) -> None:
        with self._changed:
            while self._credits <= 0 and not self._open:
                self._changed.wait()
            self._credits -= 1

    def give(self, count: int = 1) -> None:
        with self._changed:
            self._credits += count
            self._changed.notify(count)

    def open(self) -> None:
        with self._changed:
            self._open = True
            self._changed.notify_all()


class ResponseStream:
    """The responses of one decoupled request. `send` may be called from any thread; the
    front door's `on_response` runs on the loop, in send order, and never after the final one."""

    __slots__ = (
        "_closed",
        "_credits",
        "_finished",
        "_lock",
        "_loop",
        "_on_close",
        "_on_response",
        "_sent",
        "_taken",
        "_waiting",
        "cancelled",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_response: OnResponse,
        on_close: Callable[[ResponseStream], None],
        credits: SendCredits | None = None,
    ) -> None:
        self._loop = loop
        self._credits = credits  # back-pressure from an ensemble: a send takes a credit
        self._on_response = on_response
        self._on_close = on_close
        self._lock = threading.Condition(threading.Lock())
        # Responses handed to the loop, and taken on by it (counted by the loop alone, with
        # no lock: the loop never waits for a sender).
        self._sent = 0
        self._taken = 0
        self._waiting = 0  # senders waiting for room
        self._closed = False  # sender side: the final flag was sent, nothing more may come
        self._finished = False  # loop side: the final response was handed to the front door
        self.cancelled = False  # the client went away (the model may ask: is_cancelled())

    def send(self, item: StreamItem, final: bool) -> bool:
        """From any thread. False when the stream is already closed (nothing is sent). Waits
        while the stream is held back (never on the loop's own thread)."""
        if self._credits is not None and not self._on_loop():
            self._credits.take()
        with self._lock:  # one sender at a time: the loop gets them in this order
            if self._sent - self._taken >= MAX_UNDELIVERED and not self._on_loop():
                self._waiting += 1
                while not self._may_send():
                    # Woken by the loop; the timeout covers a wake-up that raced the count.
                    self._lock.wait(0.005)
                self._waiting -= 1
            if self._closed:
                return False
            self._closed = final
            try:
                self._loop.call_soon_threadsafe(self._take, item, final)
            except RuntimeError:  # the loop is gone (process exit): nobody reads any more
                self._closed = True
                return False
            self._sent += 1
        return True

    def _may_send(self) -> bool:
        return self._sent - self._taken < MAX_UNDELIVERED or self._finished or self.cancelled

    def _take(self, item: StreamItem, final: bool) -> None:
        """On the loop: a sent response arrives."""
        self._taken += 1
        # A waiting sender goes on once half the room is free: it then sends a run of
        # responses instead of waking for each one.
        if self._waiting and self._sent - self._taken <= MAX_UNDELIVERED // 2:
            with self._lock:
                self._lock.notify()
        self._deliver(item, final)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def holds_back(self) -> bool:
        return self._credits is not None

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def seal(self) -> None:
        """From any thread: refuse further sends (the request failed as a whole)."""
        with self._lock:
            self._closed = True

    def abort(self, error: InferdError) -> None:
        """On the loop: end the stream with `error`, unless its final response went already.
        The request counts as cancelled: a model still working on it may stop."""
        self.seal()
        self.cancelled = True
        self._deliver(error, True)

    def settle(self, future: asyncio.Future[Outputs]) -> None:
        """The scheduler's answer for the request (execute() returned, or the request failed
        before or while it ran): a failure ends the stream; success leaves it to the model."""
        if not future.cancelled() and (error := future.exception()) is not None:
            self.abort(error if isinstance(error, InferdError) else _internal(error))

    def _deliver(self, item: StreamItem, final: bool) -> None:
        if self._finished:
            return
        if final:
            self._finished = True
            if self._waiting:  # a sender waiting for room sends into a finished stream
                with self._lock:
                    self._lock.notify_all()
            self._on_close(self)
        try:
            self._on_response(item, final)
        except Exception:  # one client's failure must not reach the model's thread or loop
            log.exception("handing a decoupled response to its client failed")


def _internal(error: BaseException) -> InferdError:
    return InferdError(ErrorCode.INTERNAL, str(error))


@dataclass(slots=True)
class StreamRequest(InferRequest):
    """A request to a decoupled model with the stream its responses go to."""

    responses: ResponseStream | None = None


def stream_request(request: InferRequest, responses: ResponseStream) -> StreamRequest:
    return StreamRequest(
        request.model_name,
        request.model_version,
        request.inputs,
        request.id,
        request.parameters,
        request.outputs,
        request.arrival_ns,
        request.trace,
        send_credits=request.send_credits,
        input_parameters=request.input_parameters,
        headers=request.headers,
        responses=responses,
    )


class OpenStreams:
    """The response streams of a decoupled model's requests, counted open until their final
    response. A decoupled model's scheduler holds one; its unload waits for the open streams
    up to `unload_timeout_s`, then ends those still open with an error (a model that never
    sends its final flag must not hold an unload forever)."""

    def __init__(
        self,
        model: str,
        loop: asyncio.AbstractEventLoop,
        unload_timeout_s: float,
        required: bool = True,
    ) -> None:
        """`required`: every request needs a stream (a decoupled model); else a request may
        come without one and get a single answer (an MLServer model's infer)."""
        self.required = required
        self._model = model
        self._loop = loop
        self._unload_timeout_s = unload_timeout_s
        self._open: set[ResponseStream] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    def open(self, on_response: OnResponse, credits: SendCredits | None = None) -> ResponseStream:
        """A stream for one request (`credits`: its back-pressure, see ResponseStream)."""
        stream = ResponseStream(self._loop, on_response, self._closed, credits)
        self._open.add(stream)
        self._all_closed.clear()
        return stream

    def _closed(self, stream: ResponseStream) -> None:
        self._open.discard(stream)
        if not self._open:
            self._all_closed.set()

    async def wait_closed(self) -> None:
        """After the scheduler drained (no request queued or executing): wait for the open
        streams' final responses, then end the late ones."""
        if not self._open:
            return
        try:
            await asyncio.wait_for(self._all_closed.wait(), self._unload_timeout_s)
        except TimeoutError:
            log.warning(
                "model '%s': %d request(s) sent no final response within %gs of the unload; "
                "ending them with an error",
                self._model,
                len(self._open),
                self._unload_timeout_s,
            )
            error = unavailable(
                f"model '{self._model}' was unloaded before the request sent its final response"
            )
            for stream in list(self._open):
                stream.abort(error)
