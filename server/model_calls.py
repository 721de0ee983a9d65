"""Calls from model code to other models of the same server (Triton's business logic
scripting, BLS): a model instance's thread hands an InferRequest to the core on the event loop
and waits for the answer, which goes through the called model's scheduler like any request."""

from __future__ import annotations

import asyncio
import queue
from typing import Protocol

from inferd.server.errors import ErrorCode, InferdError, internal, unavailable
from inferd.server.types import Cancel, InferRequest, InferResponse, OnStreamResponse

# One answer of a streamed call and whether it is the last (see OnStreamResponse).
StreamAnswer = tuple[InferResponse | InferdError | None, bool]

_NOT_STARTED = "the server is still starting: no model can be called yet"


class Infers(Protocol):
    async def infer(self, request: InferRequest) -> InferResponse: ...

    def stream(self, request: InferRequest, on_response: OnStreamResponse) -> Cancel | None: ...


class ResponseStream:
    """The answers to one streamed call, filled on the loop, read on the caller's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._answers: queue.SimpleQueue[StreamAnswer] = queue.SimpleQueue()
        self._cancel: Cancel | None = None

    def started(self, cancel: Cancel | None) -> None:
        self._cancel = cancel

    def put(self, answer: InferResponse | InferdError | None, final: bool) -> None:
        self._answers.put((answer, final))

    def get(self) -> StreamAnswer:
        """The next answer; blocks until it is in."""
        return self._answers.get()

    def cancel(self) -> None:
        """Drop the call: a queued request never runs; a running decoupled model may stop. The
        answers in so far stay, then a CANCELLED error ends the stream (what the model sends
        after this is dropped)."""
        self._loop.call_soon_threadsafe(self._run_cancel)

    def _run_cancel(self) -> None:
        if self._cancel is not None:
            self._cancel()
        self.put(InferdError(ErrorCode.CANCELLED, "the request was cancelled"), True)


class LoopModelCalls:
    """The server's end of BLS. Built before the core (backends get it at load), so the core
    is attached once it exists (`serve`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._core: Infers | None = None

    def serve(self, core: Infers) -> None:
        self._core = core

    def infer(self, request: InferRequest) -> InferResponse:
        """From an instance thread: blocks that thread until the answer is in."""
        if self._loop_thread():
            # The loop would wait for itself; python instances never run on it, so this is a bug.
            raise internal("a model called another model from the event loop's thread")
        return asyncio.run_coroutine_threadsafe(self._infer(request), self._loop).result()

    async def infer_async(self, request: InferRequest) -> InferResponse:
        """From a coroutine on another loop (an instance's own loop, for async execute())."""
        future = asyncio.run_coroutine_threadsafe(self._infer(request), self._loop)
        return await asyncio.wrap_future(future)

    def stream(self, request: InferRequest) -> ResponseStream:
        """From any thread but the loop's: start a call whose answers stream (any model; a
        decoupled one may answer 0..n times). Returns at once; the answers follow."""
        if self._loop_thread():
            raise internal("a model streamed a call to another model from the event loop's thread")
        stream = ResponseStream(self._loop)
        self._loop.call_soon_threadsafe(self._stream, request, stream)
        return stream

    def _stream(self, request: InferRequest, stream: ResponseStream) -> None:
        if self._core is None:
            stream.put(
                unavailable("the server is still starting: no model can be called yet"), True
            )
            return
        stream.started(self._core.stream(request, stream.put))

    async def _infer(self, request: InferRequest) -> InferResponse:
        if self._core is None:
            raise unavailable(_NOT_STARTED)
        return await self._core.infer(request)

    def _loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:  # no loop runs on this thread
            return False
