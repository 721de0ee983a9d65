"""The few Redis commands the response cache sends, on asyncio connections that pipeline:
each command is written as it comes, and Redis answers in order, so a connection carries any
number of commands in flight with no pool to wait for.

Hand-written rather than redis-py: a cache hit must cost less than the model it saves, and
redis-py's asyncio client spent about 60 µs of CPU per command here, one command at a time per
pooled connection; this one about 25 µs, most of it the socket's system calls, and commands in
flight together share round trips. RESP2 replies, AUTH, SELECT and TLS are all the cache needs.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from functools import partial
from typing import cast

from inferd.server.cache_config import RedisCacheConfig, RedisTls

Reply = bytes | int | None  # bulk and simple strings, integers, nil
Arg = bytes | str
_CLOSE_TIMEOUT_S = 1.0  # a closing connection's goodbye to Redis, at most


class RedisReplyError(Exception):
    """Redis answered a command with an error (-WRONGPASS, -WRONGTYPE...)."""


class _Connection(asyncio.Protocol):
    """One socket: replies resolve the commands' futures in the order they were sent."""

    def __init__(self, socket_timeout: float | None) -> None:
        self._timeout = socket_timeout
        self._pending: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.lost = asyncio.get_running_loop().create_future()  # done once the socket is gone

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def send(self, args: tuple[Arg, ...]) -> asyncio.Future[Reply]:
        if self.closed or self._transport is None:
            raise ConnectionError("the connection to Redis is closed")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._transport.write(_encode(args))
        self._pending.append((future, time.monotonic()))
        if self._timeout is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._check)
        return future

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while self._pending:
            try:
                parsed = _parse(buffer, offset)
            except ValueError as exc:  # not Redis, or out of step: nothing on it can be trusted
                self._abort(ConnectionError(f"unexpected reply from Redis: {exc}"))
                return
            if parsed is None:
                break  # the rest of this reply is still on its way
            reply, offset = parsed
            future, _ = self._pending.popleft()
            if not future.done():
                if isinstance(reply, RedisReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"Redis closed the connection{f': {exc}' if exc else ''}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(ConnectionError("the connection to Redis was closed"))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _check(self) -> None:
        """The oldest command has had socket_timeout: a Redis that does not answer is
        dropped, with everything in flight on it."""
        self._timer = None
        if not self._pending or self._timeout is None:
            return
        waited = time.monotonic() - self._pending[0][1]
        if waited < self._timeout:
            self._timer = asyncio.get_running_loop().call_later(self._timeout - waited, self._check)
            return
        self._abort(TimeoutError(f"Redis did not answer within {self._timeout * 1000:.0f} ms"))

    def _abort(self, error: Exception) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(error)

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(error)


class RedisClient:
    """`pool_size` pipelining connections, used in turn, each opened (and logged into) when
    first needed and again after it breaks. Errors: OSError (connection, TimeoutError) or
    RedisReplyError."""

    def __init__(self, config: RedisCacheConfig) -> None:
        self._config = config
        self._ssl = _tls_context(config.tls) if config.tls is not None else None
        self._connections: list[_Connection | None] = [None] * config.pool_size
        self._opening: list[asyncio.Future[_Connection] | None] = [None] * config.pool_size
        self._next = 0

    def send(self, *args: Arg) -> asyncio.Future[Reply]:
        """The command's reply, to come. On an open connection it is written at once, with no
        task: a cache hit is a few callbacks."""
        slot = self._next
        self._next = (slot + 1) % len(self._connections)
        connection = self._connections[slot]
        if connection is not None and not connection.closed:
            return connection.send(args)
        return asyncio.ensure_future(self._send_when_open(slot, args))

    async def _send_when_open(self, slot: int, args: tuple[Arg, ...]) -> Reply:
        connection = await self._open(slot)
        return await connection.send(args)

    async def close(self) -> None:
        """Close every connection, and wait until each is gone: a TLS one first says goodbye
        to Redis, a round trip that must not outlive the event loop (it could not close with
        a socket still open). A connection whose Redis does not answer in time is cut off."""
        for opening in self._opening:
            if opening is not None:
                opening.cancel()
        connections = [c for c in self._connections if c is not None]
        self._connections = [None] * len(self._connections)
        await _close(connections)

    async def _open(self, slot: int) -> _Connection:
        """One opening per slot at a time: the commands that find it closed wait for it."""
        opening = self._opening[slot]
        if opening is None:
            opening = asyncio.ensure_future(self._connect())
            self._opening[slot] = opening
            opening.add_done_callback(partial(self._opened, slot))
        return await asyncio.shield(opening)

    def _opened(self, slot: int, opening: asyncio.Future[_Connection]) -> None:
        self._opening[slot] = None
        if not opening.cancelled() and opening.exception() is None:
            self._connections[slot] = opening.result()

    async def _connect(self) -> _Connection:
        config = self._config
        loop = asyncio.get_running_loop()
        timeout = _seconds(config.socket_timeout_ms)
        server_name = (config.tls.sni or config.host) if config.tls is not None else None
        _, connection = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Connection(timeout),
                config.host,
                config.port,
                ssl=self._ssl,
                server_hostname=server_name,
            ),
            _seconds(config.connect_timeout_ms),
        )
        try:
            if config.password:
                login = (config.user, config.password) if config.user else (config.password,)
                await connection.send(("AUTH", *login))
            if config.db:
                await connection.send(("SELECT", str(config.db)))
        except BaseException:
            await _close([connection])
            raise
        return connection


async def _close(connections: list[_Connection]) -> None:
    """Close the connections and wait until each is gone; one whose Redis does not answer in
    time is cut off."""
    for connection in connections:
        connection.close()
    if not connections:
        return
    _, late = await asyncio.wait([c.lost for c in connections], timeout=_CLOSE_TIMEOUT_S)
    if late:
        for connection in connections:
            connection.abort()
        await asyncio.wait(late, timeout=_CLOSE_TIMEOUT_S)


def _tls_context(tls: RedisTls) -> ssl.SSLContext:
    """As hiredis checks a server: its chain against cacert/cacert_dir (else the system's
    roots), not its host name, and without the RFC 5280 strictness Python 3.13 turns on by
    default (a CA without a key usage extension, which Triton's Redis cache accepts, would
    fail)."""
    context = ssl.create_default_context(cafile=tls.cacert or None, capath=tls.cacert_dir or None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    if tls.cert:
        context.load_cert_chain(tls.cert, tls.key or None)
    return context


def _seconds(ms: int) -> float | None:
    return ms / 1000 if ms else None  # Triton's 0: wait forever


def _encode(args: tuple[Arg, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


def _parse(buffer: bytearray, offset: int) -> tuple[Reply | RedisReplyError, int] | None:
    """One RESP2 reply at `offset` and the offset after it; None until all of it is there.
    The cache's commands answer single values, never arrays."""
    end = buffer.find(b"\r\n", offset)
    if end < 0:
        return None
    kind, line = buffer[offset : offset + 1], bytes(buffer[offset + 1 : end])
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, end + 2
        start = end + 2
        if len(buffer) < start + length + 2:
            return None
        return bytes(buffer[start : start + length]), start + length + 2
    if kind == b"+":
        return line, end + 2
    if kind == b":":
        return int(line), end + 2
    if kind == b"-":
        return RedisReplyError(line.decode(errors="replace")), end + 2
    raise ValueError(repr(bytes(buffer[offset:end])))
