"""Pre-opened keep-alive HTTP/1.1 connections for open-loop load generation.

A load generator that shares the CPU with the server it measures must cost little per request,
or its own lag ends up in every latency it reports. This client sends pre-encoded request
bytes, parses responses with httptools (C) and reports each answer through a callback: no task,
no header dicts, no URL parsing per request. One request is outstanding per connection at a
time (no pipelining), so a slow answer never delays another one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httptools

CONNECTION_LOST = 0  # the status reported when a connection fails before answering

# (status, body, seconds from send to the end of the response)
OnAnswer = Callable[[int, bytes, float], None]


def post_request(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The full bytes of one POST, encoded once and sent as many times as needed."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get_request(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("latin-1")


class _Connection(asyncio.Protocol):
    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._on_answer: OnAnswer | None = None
        self._sent_at = 0.0
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def send(self, request: bytes, on_answer: OnAnswer) -> None:
        assert self._transport is not None
        self._on_answer = on_answer
        self._body.clear()
        self._sent_at = time.perf_counter()
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        on_answer, self._on_answer = self._on_answer, None
        if on_answer is None:
            return
        elapsed = time.perf_counter() - self._sent_at
        body = b"".join(self._body)
        if self._parser.should_keep_alive():
            self._pool.release(self)
        else:
            self.close()
        on_answer(self._parser.get_status_code(), body, elapsed)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.forget(self)
        on_answer, self._on_answer = self._on_answer, None
        if on_answer is not None:
            on_answer(CONNECTION_LOST, b"", time.perf_counter() - self._sent_at)

    def close(self) -> None:
        """Close without reporting: an answer still owed is simply never given."""
        self._on_answer = None
        if self._transport is not None:
            self._transport.abort()


class HttpPool:
    """`size` connections to one server, opened up front; `try_send` uses an idle one."""

    def __init__(self) -> None:
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    @classmethod
    async def open(cls, host: str, port: int, size: int) -> HttpPool:
        pool = cls()
        loop = asyncio.get_running_loop()
        for _ in range(size):
            _, connection = await loop.create_connection(lambda: _Connection(pool), host, port)
            pool._all.add(connection)
            pool._idle.append(connection)
        return pool

    @property
    def busy(self) -> int:
        return len(self._all) - len(self._idle)

    def try_send(self, request: bytes, on_answer: OnAnswer) -> bool:
        """Send on an idle connection; False (nothing sent) when every connection is busy."""
        if not self._idle:
            return False
        self._idle.pop().send(request, on_answer)
        return True

    async def fetch(self, request: bytes) -> tuple[int, bytes]:
        """One request, awaited: for the occasional control call between load runs."""
        answer: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def done(status: int, body: bytes, elapsed: float) -> None:
            if not answer.done():
                answer.set_result((status, body))

        if not self.try_send(request, done):
            raise RuntimeError("no idle connection for a control request")
        return await answer

    def release(self, connection: _Connection) -> None:
        if connection in self._all:
            self._idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        self._all.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        """Abort every connection; answers still owed are never reported."""
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()
