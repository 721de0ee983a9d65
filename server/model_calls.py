"""Calls from model code to other models of the same server (Triton's business logic
scripting, BLS): a model instance's thread hands an InferRequest to the core on the event loop
and waits for the answer, which goes through the called model's scheduler like any request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from inferd.server.errors import DecoupledRefused, ErrorCode, InferdError, internal, unavailable
from inferd.server.types import Cancel, InferRequest, InferResponse, OnStreamResponse

# One answer of a streamed call and whether it is the last (see OnStreamResponse).
StreamAnswer = tuple[InferResponse | InferdError | None, bool]

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from inferd.batching.scheduler import Outputs
    from inferd.repository.manager import ModelVersion

_NOT_STARTED = "the server is still starting: no model can be called yet"
_STOPPING = "the server is stopping"


class Infers(Protocol):
    def submit(
        self,
        request: InferRequest,
        model: ModelVersion | None = None,
        on_done: Callable[[asyncio.Future[Outputs]], None] | None = None,
    ) -> tuple[ModelVersion, asyncio.Future[Outputs]]: ...

    def response(
        self, request: InferRequest, model: ModelVersion, outputs: Outputs
    ) -> InferResponse: ...

    def stream(self, request: InferRequest, on_response: OnStreamResponse) -> Cancel | None: ...

    async def load_model(
        self,
        name: str,
        config: str | None = None,
        files: dict[str, bytes] | None = None,
        requested_by: str = "",
    ) -> None: ...

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None: ...

    def model_ready(self, name: str, version: str = "", check_version: bool = False) -> bool: ...


class AnswerStream(Protocol):
    """What a model reads the answers of a streamed call from."""

    def get(self) -> StreamAnswer:
        """The next answer; blocks until it is in."""

    def cancel(self) -> None:
        """Drop the call (see ResponseStream.cancel)."""


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
        if self._loop_thread():  # the loop would wait for itself
            raise internal(f"a model called another model from the event loop's thread{_WHY}")
        # Submitted from a callback and answered from the called model's resolution: no task
        # per call, and no loop turn between the answer and the waiting thread's wake-up.
        answer: concurrent.futures.Future[InferResponse] = concurrent.futures.Future()
        try:
            self._loop.call_soon_threadsafe(self.infer_now, request, partial(_settle, answer))
        except RuntimeError:  # the loop has closed
            raise unavailable(_STOPPING) from None
        return answer.result()

    async def infer_async(self, request: InferRequest) -> InferResponse:
        """From a coroutine on another loop (an instance's own loop, for async execute()), or
        on the server's (a stub's call)."""
        if self._loop_thread():
            return await self._infer(request)
        future = asyncio.run_coroutine_threadsafe(self._infer(request), self._loop)
        return await asyncio.wrap_future(future)

    def stream(self, request: InferRequest) -> ResponseStream:
        """From any thread but the loop's: start a call whose answers stream (any model; a
        decoupled one may answer 0..n times). Returns at once; the answers follow."""
        if self._loop_thread():
            raise internal(
                f"a model streamed a call to another model from the event loop's thread{_WHY}"
            )
        stream = ResponseStream(self._loop)
        self._loop.call_soon_threadsafe(self._stream, request, stream)
        return stream

    def _stream(self, request: InferRequest, stream: ResponseStream) -> None:
        if self._core is None:
            stream.put(unavailable(_NOT_STARTED), True)
            return
        stream.started(self._core.stream(request, stream.put))

    def infer_now(
        self, request: InferRequest, answer: Callable[[InferResponse | BaseException], None]
    ) -> None:
        """On the loop: submitted at once, answered as the called model's scheduler resolves
        it (a stub's call: no task, and no loop turn between the answer and its sending)."""
        core = self._core
        if core is None:
            answer(unavailable(_NOT_STARTED))
            return

        def done(outputs: asyncio.Future[Outputs]) -> None:
            try:
                response = core.response(request, model, outputs.result())
            except BaseException as exc:  # a failure, or the call cancelled at shutdown
                answer(exc)
                return
            answer(response)

        try:
            model, _ = core.submit(request, on_done=done)  # done() runs after this returns
        except Exception as exc:
            answer(_refused(request.model_name, exc))

    async def _infer(self, request: InferRequest) -> InferResponse:
        answered: asyncio.Future[InferResponse] = self._loop.create_future()

        def answer(outcome: InferResponse | BaseException) -> None:
            if answered.done():  # the caller was cancelled
                return
            if isinstance(outcome, BaseException):
                answered.set_exception(outcome)
            else:
                answered.set_result(outcome)

        self.infer_now(request, answer)
        return await answered

    # ---- model control (pb_utils.load_model & co.) -----------------------------------------

    def load(
        self,
        name: str,
        config: str | None,
        files: Mapping[str, bytes],
        wait: bool = True,
        requested_by: str = "",
    ) -> None:
        """Load or reload `name` as the repository API would, on behalf of model
        `requested_by` (see ModelRepository.load)."""
        load = self._load(name, config, dict(files), requested_by)
        self._control(f"load model '{name}'", load, wait)

    def unload(self, name: str, unload_dependents: bool = False, wait: bool = True) -> None:
        self._control(f"unload model '{name}'", self._unload(name, unload_dependents), wait)

    def ready(self, name: str, version: str = "") -> bool:
        return bool(self._control(f"check model '{name}'", self._ready(name, version), wait=True))

    async def _load(
        self, name: str, config: str | None, files: dict[str, bytes], requested_by: str
    ) -> None:
        await self._started().load_model(name, config, files, requested_by)

    async def _unload(self, name: str, unload_dependents: bool) -> None:
        await self._started().unload_model(name, unload_dependents)

    async def _ready(self, name: str, version: str) -> bool:
        return self._started().model_ready(name, version, check_version=True)

    def _control(self, what: str, change: Coroutine[Any, Any, Any], wait: bool) -> Any:
        if self._loop_thread():
            change.close()
            raise internal(f"a model asked to {what} from the event loop's thread{_WHY}")
        future = asyncio.run_coroutine_threadsafe(change, self._loop)
        if wait:
            return future.result()
        future.add_done_callback(lambda done: _log_failure(what, done))
        return None

    def _started(self) -> Infers:
        if self._core is None:
            raise unavailable(_NOT_STARTED)
        return self._core

    def _loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:  # no loop runs on this thread
            return False


# Why a model runs there: its config's scheduling.INLINE_PARAMETER (not imported: a cycle).
_WHY = (
    ", where its short batches run because its config sets 'inferd.inline_execution_us': it "
    "cannot wait there (its batches run on its own thread from now on)"
)


def _refused(model: str, exc: Exception) -> Exception:
    """A call the server refused before the called model ran it (unknown model, a request
    that does not fit it), worded as Triton's BLS words it."""
    if not isinstance(exc, InferdError):
        return exc
    why = exc.message
    if isinstance(exc, DecoupledRefused):
        why = (
            f"Model {model} is using the decoupled. The current BLS request call doesn't support "
            "models using the decoupled transaction policy. Please use 'decoupled=True' argument "
            "to the 'exec' or 'async_exec' calls for decoupled models.'"
        )
    return InferdError(exc.code, f"Model {model} - Error when running inference: {why}")


def _settle(
    future: concurrent.futures.Future[InferResponse], outcome: InferResponse | BaseException
) -> None:
    if isinstance(outcome, asyncio.CancelledError):  # the call was cancelled at shutdown
        future.set_exception(unavailable(_STOPPING))
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _log_failure(what: str, done: concurrent.futures.Future[Any]) -> None:
    exc = None if done.cancelled() else done.exception()
    if exc is not None:
        log.error("a model's request to %s failed: %s", what, exc)
