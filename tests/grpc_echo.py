"""A small method table for transport tests: bytes in and out, behaviour picked by request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from inferd.server.grpc_calls import MethodKind, Respond, RpcError, RpcMethod, ServerCall

UNARY = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"
BIDI = "/test.Echo/Bidi"
NOW = "/test.Echo/Now"  # unary, answered from a callback (answer_now), no task
ERROR_DETAILS = "bad input: ünïcødé 100% ✓"


@dataclass
class Recorder:
    """What the handlers saw, for assertions."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends a bidi "hold"


def _identity(data: bytes) -> bytes:
    return bytes(data)


def _parse(data: bytes) -> bytes:
    if data == b"unparsable":
        raise ValueError("cannot parse")
    return bytes(data)


def echo_methods(recorder: Recorder) -> dict[str, RpcMethod]:
    async def wait(seconds: float) -> None:
        recorder.started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            recorder.cancelled.set()
            raise
        recorder.finished.set()

    async def unary(request: bytes, call: ServerCall) -> bytes:
        if request == b"error":
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, ERROR_DETAILS)
        if request == b"crash":
            raise ZeroDivisionError("boom")
        if request.startswith(b"sleep:"):
            await wait(float(request[6:]))
        if request.startswith(b"big:"):
            return b"x" * int(request[4:])
        return request

    async def stream(request: bytes, call: ServerCall) -> None:
        count, _, size = request.partition(b"x")
        for index in range(int(count)):
            await call.write(b"%d:" % index + b"y" * int(size or 0))
        if request == b"0":
            raise RpcError(grpc.StatusCode.NOT_FOUND, "nothing")

    async def bidi(requests: AsyncIterator[bytes], call: ServerCall) -> None:
        async for request in requests:
            if request.startswith(b"sleep:"):
                await wait(float(request[6:]))
            if request == b"hold":
                recorder.started.set()
                await recorder.release.wait()
            await call.write(b"echo:" + request)

    def now(
        request: bytes, respond: Respond, arrival_ns: int, call: ServerCall
    ) -> asyncio.Future[None] | None:
        if request == b"error":
            respond(RpcError(grpc.StatusCode.INVALID_ARGUMENT, ERROR_DETAILS))
            return None
        if not request.startswith(b"later:"):
            respond(request)
            return None
        recorder.started.set()
        work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        work.add_done_callback(lambda f: recorder.cancelled.set() if f.cancelled() else None)

        def done() -> None:
            if not work.done():
                work.set_result(None)
                recorder.finished.set()
                respond(b"done:" + request)

        asyncio.get_running_loop().call_later(float(request[6:]), done)
        return work

    return {
        UNARY: RpcMethod(MethodKind.UNARY_UNARY, unary, _parse, _identity),
        NOW: RpcMethod(MethodKind.UNARY_UNARY, unary, _parse, _identity, now),
        STREAM: RpcMethod(MethodKind.UNARY_STREAM, stream, _parse, _identity),
        BIDI: RpcMethod(MethodKind.STREAM_STREAM, bidi, _parse, _identity),
    }
