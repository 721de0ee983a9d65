"""inferd's HTTP/1.1 server: httptools parsing on an asyncio protocol.

uvicorn turns every request into an ASGI scope, a task and a handful of message dicts; on small
inferences that cycle is a quarter of the event loop's time (measured: the same ORT-inline probe
answers about 1.4x as many requests on a bare httptools protocol as on uvicorn's ASGI cycle). Here a
front door can claim a request as a *fast route*: a plain callback that answers through `reply`
(from a callback as the batch's results come in, no task), which `/infer` uses. Every other request
goes to an ASGI application through a small bridge, so Starlette still routes the rest of the API.

HTTP/1.1 as clients use it: keep-alive, pipelining (answered in order, one at a time), chunked
request bodies, `Expect: 100-continue`, a body size limit (413), an idle timeout, and a graceful
stop that answers what was accepted before it closes. ASGI responses are buffered and sent with
a Content-Length: inferd's routes answer small documents. A response whose body comes in parts
(`more_body`, e.g. the Server-Sent Events of generate_stream) is written as it comes, chunked.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol, cast
from urllib.parse import unquote

import httptools
from starlette.types import ASGIApp, Message

from inferd.server.errors import body_too_large
from inferd.server.graceful import stop_serving
from inferd.server.http_codec import encode_error
from inferd.server.turn_clock import TurnClock

log = logging.getLogger(__name__)

Headers = Sequence[tuple[bytes, bytes]]
# How a handler answers: status, headers (without Content-Length), body. Called once.
Reply = Callable[[int, Headers, bytes], None]


class Declined:
    """What a fast handler returns for a request that is the ASGI app's after all (one its
    path claimed, but its headers send elsewhere); it must not have answered or changed it."""


DECLINED = Declined()
# A fast route answers through `reply` and may return a future that a disconnect cancels.
FastHandler = Callable[["HttpRequest", Reply], "asyncio.Future[Any] | Declined | None"]
# Picks the fast handler for (method, decoded path); None sends the request to the ASGI app.
FastRouter = Callable[[str, str], FastHandler | None]

JSON_HEADERS: Headers = ((b"content-type", b"application/json"),)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_PIPELINE = 32  # requests read ahead of the one being answered before reading pauses


def _status_lines() -> dict[int, bytes]:
    return {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


STATUS_LINES = _status_lines()


@dataclass(frozen=True, slots=True)
class Http1Options:
    max_body_size: int
    keep_alive_timeout_s: float = 75.0  # as nginx; Triton's own front end keeps idle ones open


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str  # percent-decoded, as ASGI's scope["path"]
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]  # names in lower case
    body: bytes
    keep_alive: bool
    http_version: str
    arrival_ns: int = 0  # monotonic; the start of the loop turn that read its first bytes
    # Set when the request cannot be served (malformed, too large): answered, then closed.
    error: tuple[int, str] | None = None


@dataclass(slots=True)
class _Reading:
    """The request whose bytes are arriving."""

    arrival_ns: int
    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class Http1Server:
    """Serves `app` (ASGI) on a bound socket, with `fast_route` taking what it claims first."""

    def __init__(
        self, app: ASGIApp, options: Http1Options, fast_route: FastRouter | None = None
    ) -> None:
        self.app = app
        self.options = options
        self.fast_route = fast_route
        self.connections: set[Http1Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.clock = TurnClock()  # arrival stamps of the requests

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Http1Connection(self), sock=sock)

    async def stop(self, grace: float) -> None:
        """Stop accepting, answer what was read, close; after `grace` seconds, cut the rest."""
        server, self._server = self._server, None
        connections = list(self.connections)
        await stop_serving(server, connections, Http1Connection.shutdown, lambda: self.tasks, grace)
        self.clock.close()


class Http1Connection(asyncio.Protocol):
    def __init__(self, server: Http1Server) -> None:
        self._server = server
        self._limit = server.options.max_body_size
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._clock = server.clock
        self._transport: asyncio.Transport | None = None
        self._reading: _Reading | None = None
        self._headers: list[tuple[bytes, bytes]] = []  # the reading request's, as they come
        self._queue: deque[HttpRequest] = deque()
        self._current: HttpRequest | None = None  # the request being answered
        self._cancel: asyncio.Future[Any] | None = None  # its future, cancelled on disconnect
        self._continue_owed = False  # a 100 Continue waits for earlier responses
        self._discarding = False  # a fatal error was queued: read nothing more
        self._shutting_down = False
        self._reading_paused = False
        self._writing_paused = False
        self._writable = asyncio.Event()  # set while writing is not paused
        self._writable.set()
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # ---- transport events ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server.connections.add(self)
        self._last_active = self._loop.time()
        self._idle_timer = self._loop.call_later(
            self._server.options.keep_alive_timeout_s, self._check_idle
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._cancel is not None:
            self._cancel.cancel()  # the scheduler drops a cancelled request before it runs
        self._current = None
        self._queue.clear()
        self._writable.set()  # nothing more will be written: a streaming answer goes on
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._last_active = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch (h2c, websockets): the request is answered, then the
            # connection closes, since what follows it is not HTTP/1.1.
            if self._queue:
                self._queue[-1].keep_alive = False
            self._stop_reading()
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        self._writing_paused = True  # the client is not reading: answer nothing more for now
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._writable.set()
        self._next()

    async def writable(self) -> None:
        """Wait while the client reads slower than a streamed answer is written (its part
        waits here, where its producer can see it, not in the transport without a bound)."""
        if self._writing_paused:
            await self._writable.wait()

    # ---- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reading = reading = _Reading(self._clock.now_ns())
        self._headers = reading.headers

    def on_url(self, url: bytes) -> None:
        assert self._reading is not None
        self._reading.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self._reading is not None
        declared = -1
        expect = False
        for name, value in self._reading.headers:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if declared > self._limit:
            self._refuse(413, body_too_large(self._limit).message)
        elif expect:
            self._continue_owed = True
            self._owe_continue()

    def on_body(self, body: bytes) -> None:
        reading = self._reading
        if reading is None or self._discarding:
            return
        reading.size += len(body)
        if reading.size > self._limit:
            self._refuse(413, body_too_large(self._limit).message)
            return
        reading.chunks.append(body)

    def on_message_complete(self) -> None:
        reading, self._reading = self._reading, None
        if reading is None or self._discarding:
            return
        parsed = httptools.parse_url(reading.url)
        raw_path: bytes = parsed.path
        chunks = reading.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = HttpRequest(
            method=self._parser.get_method().decode("ascii"),
            path=unquote(path) if "%" in (path := raw_path.decode("latin-1")) else path,
            raw_path=raw_path,
            query=parsed.query or b"",
            headers=reading.headers,
            body=body,
            keep_alive=self._parser.should_keep_alive(),
            http_version=self._parser.get_http_version(),
            arrival_ns=reading.arrival_ns,
        )
        self._queue.append(request)
        if len(self._queue) > MAX_PIPELINE:
            self._pause_reading()
        self._next()

    # ---- answering, in order -----------------------------------------------------------------

    def _next(self) -> None:
        while self._current is None and self._queue and not self._writing_paused:
            request = self._queue.popleft()
            if self._reading_paused and not self._discarding and not self._shutting_down:
                self._resume_reading()
            self._current = request
            if request.error is not None:
                status, message = request.error
                self._reply(status, JSON_HEADERS, encode_error(message))
                continue
            route = self._server.fast_route
            handler = route(request.method, request.path) if route is not None else None
            if handler is None:
                self._start_asgi(request)
                continue
            try:
                future = handler(request, self._reply)
            except Exception as exc:  # a handler bug must not take the connection down
                log.exception("%s %s failed unexpectedly", request.method, request.path)
                self._reply(500, JSON_HEADERS, encode_error(f"internal error: {exc}"))
                continue
            if isinstance(future, Declined):
                self._start_asgi(request)
            elif self._current is request:  # not answered yet
                self._cancel = future
        if self._continue_owed:
            self._owe_continue()

    def _reply(self, status: int, headers: Headers, body: bytes) -> None:
        request = self._current
        transport = self._transport
        if request is None or transport is None or transport.is_closing():
            return  # the client left
        self._current = None
        self._cancel = None
        keep_alive = request.keep_alive and request.error is None
        lines = [STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()]
        has_length = False
        for name, value in headers:
            lines.append(b"%s: %s\r\n" % (name, value))
            has_length = has_length or name == b"content-length"
        if not has_length:
            lines.append(b"content-length: %d\r\n" % len(body))
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        elif request.http_version == "1.0":  # 1.0 closes unless told otherwise
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        if body and request.method != "HEAD":
            transport.writelines((head, body))  # one vectored write
        else:
            transport.write(head)
        self._last_active = self._loop.time()
        if not keep_alive:
            self._close()
            return
        self._next()

    def _owe_continue(self) -> None:
        """Send the 100 Continue a client waits for, once nothing is answered before it."""
        if self._current is None and not self._queue and self._transport is not None:
            self._continue_owed = False
            self._transport.write(CONTINUE)

    def _refuse(self, status: int, message: str) -> None:
        """Queue an error answer for the request being read, then read no more."""
        request = HttpRequest("", "", b"", b"", [], b"", False, "1.1", error=(status, message))
        self._reading = None
        self._continue_owed = False
        self._stop_reading()
        self._queue.append(request)
        self._next()

    # ---- the ASGI bridge ---------------------------------------------------------------------

    def _start_asgi(self, request: HttpRequest) -> None:
        task = self._loop.create_task(self._run_asgi(request))
        self._server.tasks.add(task)
        task.add_done_callback(self._server.tasks.discard)

    async def _run_asgi(self, request: HttpRequest) -> None:
        transport = self._transport
        assert transport is not None
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version,
            "server": transport.get_extra_info("sockname"),
            "client": transport.get_extra_info("peername"),
            "scheme": "http",
            "method": request.method,
            "root_path": "",
            "path": request.path,
            "raw_path": request.raw_path,
            "query_string": request.query,
            "headers": request.headers,
            "state": {},
        }
        streams = request.method != "HEAD" and request.http_version != "1.0"
        response = _BufferedResponse(self if streams else None)
        body_given = False

        async def receive() -> Message:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await asyncio.shield(self.closed)
            return {"type": "http.disconnect"}

        try:
            await self._server.app(scope, receive, response.send)
        except Exception as exc:
            log.exception("%s %s failed unexpectedly", request.method, request.path)
            if not response.started:
                self._reply(500, JSON_HEADERS, encode_error(f"internal error: {exc}"))
                return
        if not response.complete:
            self.abort()  # a response begun and never finished cannot be repaired
            return
        if not response.streaming:
            self._reply(response.status, response.headers, b"".join(response.chunks))

    def stream_head(self, status: int, headers: Headers) -> bool:
        """Begin a chunked answer to the current request (False: the client left)."""
        request = self._current
        transport = self._transport
        if request is None or transport is None or transport.is_closing():
            return False
        lines = [STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()]
        for name, value in headers:
            if name != b"content-length":
                lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"transfer-encoding: chunked\r\n")
        if not request.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        transport.write(b"".join(lines))
        return True

    def stream_chunk(self, data: bytes, last: bool) -> None:
        """One part of a chunked answer; the last one ends it (and the next request starts)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        parts = [b"%x\r\n" % len(data), data, b"\r\n"] if data else []
        if last:
            parts.append(b"0\r\n\r\n")
        transport.writelines(parts)
        self._last_active = self._loop.time()
        if not last:
            return
        request = self._current
        self._current = None
        self._cancel = None
        if request is None or not request.keep_alive:
            self._close()
            return
        self._next()

    # ---- flow control and closing ------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _stop_reading(self) -> None:
        self._discarding = True
        self._pause_reading()

    def _check_idle(self) -> None:
        timeout = self._server.options.keep_alive_timeout_s
        idle = self._loop.time() - self._last_active
        if self._current is None and not self._queue and idle >= timeout:
            self._close()
            return
        self._idle_timer = self._loop.call_later(max(timeout - idle, 0.1), self._check_idle)

    def shutdown(self) -> None:
        """Answer what was already read, then close; read nothing new."""
        self._shutting_down = True
        self._pause_reading()
        if self._queue:
            self._queue[-1].keep_alive = False
        elif self._current is not None:
            self._current.keep_alive = False
        else:
            self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class _Streamer(Protocol):
    def stream_head(self, status: int, headers: Headers) -> bool: ...
    def stream_chunk(self, data: bytes, last: bool) -> None: ...
    async def writable(self) -> None: ...


class _BufferedResponse:
    """Collects an ASGI response; it is written in one piece once complete, unless its body
    comes in parts and `streamer` can write them as they come."""

    def __init__(self, streamer: _Streamer | None = None) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.started = False
        self.complete = False
        self.streaming = False
        self._streamer = streamer

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            self.started = True
            self.status = message["status"]
            self.headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
        elif kind == "http.response.body" and self.started and not self.complete:
            body = message.get("body", b"")
            more = message.get("more_body", False)
            streamer = self._streamer
            if not self.streaming and more and streamer is not None:
                self.streaming = streamer.stream_head(self.status, self.headers)
            if self.streaming:
                assert streamer is not None
                streamer.stream_chunk(body, last=not more)
                if more:
                    await streamer.writable()  # a slow client holds the producer back
            else:
                self.chunks.append(body)
            self.complete = not more
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
