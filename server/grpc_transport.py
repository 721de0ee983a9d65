"""inferd's own gRPC server: gRPC calls over the HTTP/2 connection protocol in `http2`.

One task per call runs its handler, except for methods with an `answer_now` callback (ModelInfer),
which answer as their result comes in; everything else (framing, message parsing, deadlines, flow
control) happens in the connection's callbacks. A unary call's response headers, message and
trailers leave in one write. Handlers see the `grpc_calls` types only.

The ping policy (GrpcChannel's keepalive_permit_without_calls, http2_max_pings_without_data,
http2_min_recv_ping_interval_without_data_ms, http2_max_ping_strikes) is grpc core's: a client
that pings too often gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings".
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import grpc

from inferd.server.graceful import stop_serving
from inferd.server.grpc_calls import MethodKind, RpcError, RpcMethod
from inferd.server.grpc_wire import (
    RESPONSE_HEADERS,
    TRAILERS_OK,
    TRAILERS_ONLY_OK,
    RequestHead,
    decompress,
    parse_head,
    status_block,
    trailers_only,
)
from inferd.server.http2 import ConnectionOptions, Http2Connection, Http2Stream
from inferd.server.http2_wire import literal
from inferd.server.settings import GrpcChannel
from inferd.server.turn_clock import TurnClock

logger = logging.getLogger(__name__)

_PREFIX = struct.Struct(">BI")  # compressed flag, message length
_NO_REQUEST: Any = object()
# Request headers of HTTP/2 and gRPC themselves, never the client's metadata (as grpc.aio).
_PROTOCOL_HEADERS = frozenset({b"content-type", b"te"})
# Parsed requests of a streaming call its handler may fall behind by before the sender is held
# back: with the stream's window (http2.STREAM_WINDOW) this bounds what one stream holds.
STREAM_BACKLOG = 16


class GrpcBindError(Exception):
    """The gRPC port could not be bound (whichever stack tried)."""


class RequestStream:
    """The requests of a client-streaming call, as an async iterator ending at END_STREAM.

    When the handler falls `STREAM_BACKLOG` requests behind, `hold(True)` stops the sender
    (the stream's flow-control window is no longer given back); `hold(False)` resumes it once
    the handler has caught up by half."""

    __slots__ = ("_ended", "_held", "_hold", "_items", "_waiter")

    def __init__(self, hold: Callable[[bool], None]) -> None:
        self._items: deque[Any] = deque()
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._hold = hold
        self._held = False

    def put(self, item: Any) -> None:
        self._items.append(item)
        if not self._held and len(self._items) >= STREAM_BACKLOG:
            self._held = True
            self._hold(True)
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self._held and len(self._items) <= STREAM_BACKLOG // 2:
            self._held = False
            self._hold(False)
        return self._items.popleft()


class GrpcCall:
    """One call: request framing and parsing, the handler's task, and the response."""

    __slots__ = (
        "_arrival_ns",
        "_buf",
        "_conn",
        "_deadline",
        "_done",
        "_head",
        "_headers_sent",
        "_max",
        "_method",
        "_pending",
        "_request",
        "_requests",
        "_stream",
        "_task",
        "_trailing",
        "encoding",
    )

    def __init__(self, conn: GrpcConnection, stream: Http2Stream, head: RequestHead) -> None:
        assert head.method is not None
        self._conn = conn
        self._stream = stream
        self._method: RpcMethod = head.method
        self._head = head
        self.encoding = head.encoding
        self._max = conn.max_message_size
        self._buf = bytearray()
        self._request: Any = _NO_REQUEST
        self._requests: RequestStream | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Future[Any] | None = None  # an answer_now handler's work
        self._arrival_ns = conn.clock.now_ns()
        self._done = False
        self._headers_sent = False
        self._trailing = b""  # the handler's trailing metadata, encoded
        self._deadline: asyncio.TimerHandle | None = None
        if head.timeout is not None:
            self._deadline = conn.loop.call_later(head.timeout, self._expire)
        if self._method.kind is MethodKind.STREAM_STREAM:
            self._requests = RequestStream(partial(conn.hold, stream))
            self._start(self._run_stream(self._requests))

    # ---- requests in ---------------------------------------------------------------------------

    def feed(self, data: bytes, end_stream: bool) -> None:
        if self._done:
            return
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        pos = 0
        size = len(view)
        while size - pos >= 5 and not self._done:
            flag, length = _PREFIX.unpack_from(view, pos)
            if length > self._max:
                self.finish(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Received message larger than max ({length} vs. {self._max})",
                )
                return
            end = pos + 5 + length
            if end > size:
                break
            self._message(flag, bytes(view[pos + 5 : end]))
            pos = end
        if view is buf:
            del buf[:pos]
        elif pos < size:
            buf += view[pos:]
        if end_stream and not self._done:
            self._end_of_requests()

    def _message(self, flag: int, body: bytes) -> None:
        if flag & 1:
            if self.encoding == b"identity":
                self.finish(grpc.StatusCode.INTERNAL, "compressed message without grpc-encoding")
                return
            try:
                inflated = decompress(self.encoding, body, self._max)
            except zlib.error:
                self.finish(grpc.StatusCode.INTERNAL, "cannot decompress the request message")
                return
            if inflated is None:
                self.finish(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Received message larger than max (more than {self._max} decompressed)",
                )
                return
            body = inflated
        try:
            request = self._method.parse(body)
        except Exception:
            self.finish(grpc.StatusCode.INTERNAL, "Exception deserializing request!")
            return
        if self._requests is not None:
            self._requests.put(request)
        elif self._request is _NO_REQUEST:
            self._request = request
        else:
            self.finish(grpc.StatusCode.INTERNAL, "more than one request message on a unary call")

    def _end_of_requests(self) -> None:
        if self._buf:
            self.finish(grpc.StatusCode.INTERNAL, "request ended inside a message")
        elif self._requests is not None:
            self._requests.end()
        elif self._request is _NO_REQUEST:
            self.finish(grpc.StatusCode.INTERNAL, "no request message on a unary call")
        elif self._method.kind is MethodKind.UNARY_UNARY:
            if self._method.answer_now is not None:
                answer_now = self._method.answer_now
                self._pending = answer_now(self._request, self._respond, self._arrival_ns, self)
            else:
                self._start(self._run_unary(self._request))
        else:
            self._start(self._run_stream(self._request))
        self._request = None  # the handler holds it now

    # ---- the handler ---------------------------------------------------------------------------

    def _start(self, coro: Any) -> None:
        self._task = task = self._conn.loop.create_task(coro)
        self._conn.tasks.add(task)
        task.add_done_callback(self._conn.tasks.discard)

    async def _run_unary(self, request: Any) -> None:
        try:
            response = await self._method.handler(request, self)
        except Exception as exc:
            self._fail(exc)
            return
        self._respond(response)

    def _respond(self, response: Any) -> None:
        """The one answer of a unary call: a message, or an RpcError."""
        self._pending = None
        if isinstance(response, RpcError):
            self._fail(response)
            return
        try:
            body = self._method.serialize(response)
        except Exception as exc:
            self._fail(exc)
            return
        if len(body) > self._max:
            self._fail(RpcError(*self._too_large(len(body))))
            return
        if self._done:
            return
        self._close_deadline()
        self._done = True
        conn, stream = self._conn, self._stream
        conn.send_headers(stream, RESPONSE_HEADERS)
        conn.send_data(stream, _PREFIX.pack(0, len(body)), body)
        conn.send_trailers(stream, TRAILERS_OK + self._trailing)

    async def _run_stream(self, request: Any) -> None:
        try:
            await self._method.handler(request, self)
        except Exception as exc:
            self._fail(exc)
            return
        if not self._done:
            self._close_deadline()
            self._done = True
            self._conn.send_trailers(
                self._stream,
                (TRAILERS_OK if self._headers_sent else TRAILERS_ONLY_OK) + self._trailing,
            )

    async def write(self, message: Any) -> None:
        """Send one response message; waits while flow control or a slow reader holds it back."""
        if self._done:
            raise asyncio.CancelledError  # the call is over (reset, deadline): stop the handler
        body = self._method.serialize(message)
        if len(body) > self._max:
            raise RpcError(*self._too_large(len(body)))
        conn, stream = self._conn, self._stream
        if not self._headers_sent:
            self._headers_sent = True
            conn.send_headers(stream, RESPONSE_HEADERS)
        conn.send_data(stream, _PREFIX.pack(0, len(body)), body)
        if not conn.writable(stream):
            await conn.wait_writable(stream)

    def set_trailing_metadata(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._trailing = b"".join(
            literal(name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs
        )

    def metadata(self) -> list[tuple[str, str]]:
        return [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self._head.headers
            if name not in _PROTOCOL_HEADERS
            and not name.startswith((b":", b"grpc-"))
            and not name.endswith(b"-bin")
        ]

    def _too_large(self, size: int) -> tuple[grpc.StatusCode, str]:
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Sent message larger than max ({size} vs. {self._max})",
        )

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, RpcError):
            self.finish(exc.code, exc.details)
        else:
            logger.exception("gRPC handler for %s failed", self._method.handler)
            self.finish(grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")

    # ---- endings -------------------------------------------------------------------------------

    def finish(self, code: grpc.StatusCode, message: str) -> None:
        """End the call with a status; a handler still running is cancelled."""
        if self._done:
            return
        self._done = True
        self._close_deadline()
        if self._headers_sent:
            self._conn.send_trailers(self._stream, status_block(code, message))
        else:
            self._conn.send_trailers(self._stream, trailers_only(code, message))
        self._cancel_task()

    def cancel(self) -> None:
        """The stream is gone (client reset, lost connection, shutdown): no response."""
        self._done = True
        self._close_deadline()
        self._cancel_task()

    def _expire(self) -> None:
        self._deadline = None
        self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _close_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _cancel_task(self) -> None:
        if self._pending is not None:
            self._pending.cancel()  # the scheduler drops a cancelled request before it runs
            self._pending = None
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if self._requests is not None:
            self._requests.end()


class GrpcConnection(Http2Connection):
    def __init__(self, server: Http2GrpcServer) -> None:
        super().__init__(server.connection_options)
        self.loop = self._loop
        self.max_message_size = server.max_message_size
        self.tasks: set[asyncio.Task[None]] = set()
        self.clock = server.clock
        self._methods = server.methods
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._server.connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._server.connections.discard(self)

    def parse_head(self, headers: list[tuple[bytes, bytes]]) -> RequestHead:
        return parse_head(headers, self._methods)

    def stream_opened(self, stream: Http2Stream, head: RequestHead, end_stream: bool) -> None:
        if head.refusal is not None:
            http_status, code, message = head.refusal
            self.send_trailers(stream, trailers_only(code, message, http_status))
            return
        call = stream.call = GrpcCall(self, stream, head)
        if end_stream:
            call.feed(b"", True)

    def stream_data(self, stream: Http2Stream, data: bytes, end_stream: bool) -> None:
        call: GrpcCall | None = stream.call
        if call is not None:
            call.feed(data, end_stream)

    def stream_reset(self, stream: Http2Stream) -> None:
        call: GrpcCall | None = stream.call
        if call is not None:
            call.cancel()


class Http2GrpcServer:
    """A gRPC server on inferd's HTTP/2 layer, for the handlers in `methods` (keyed by path)."""

    def __init__(self, methods: Mapping[str, RpcMethod], channel: GrpcChannel) -> None:
        self.methods = {path.encode(): method for path, method in methods.items()}
        self.max_message_size = channel.max_message_size
        self._reuse_port = channel.reuse_port
        self.connection_options = ConnectionOptions(
            max_concurrent_streams=channel.max_concurrent_streams,
            keepalive_time=channel.keepalive_time_ms / 1000,
            keepalive_timeout=channel.keepalive_timeout_ms / 1000,
            max_age=channel.max_connection_age_ms / 1000 or None,
            max_age_grace=channel.max_connection_age_grace_ms / 1000 or None,
            permit_without_calls=channel.keepalive_permit_without_calls,
            max_pings_without_data=channel.http2_max_pings_without_data,
            min_recv_ping_interval=channel.http2_min_recv_ping_interval_without_data_ms / 1000,
            max_ping_strikes=channel.http2_max_ping_strikes,
        )
        self.connections: set[GrpcConnection] = set()
        self._server: asyncio.Server | None = None
        self.clock = TurnClock()  # arrival stamps of the calls

    async def start(self, address: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen (over TLS when given a context); returns the bound port (an ephemeral one
        for port 0)."""
        loop = asyncio.get_running_loop()
        try:
            # SO_REUSEPORT only when asked (--reuse-grpc-port): a port someone else holds must
            # fail here.
            self._server = await loop.create_server(
                lambda: GrpcConnection(self),
                address,
                port,
                reuse_address=True,
                reuse_port=self._reuse_port,
                backlog=1024,
                ssl=tls,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise GrpcBindError(f"cannot bind gRPC to {address}:{port}: {reason}") from exc
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let running ones finish for up to `grace` seconds, then cancel them."""
        server, self._server = self._server, None
        connections = list(self.connections)
        await stop_serving(
            server,
            connections,
            GrpcConnection.goaway,
            lambda: [task for conn in connections for task in conn.tasks],
            grace,
        )
        self.clock.close()
