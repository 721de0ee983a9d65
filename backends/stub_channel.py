"""The wire between the server and a python model's stub process (python_process.py is the
server's end, python_stub.py the stub's): pickled tuples `(op, ...)` over two sockets.

Batches go over the direct socket: the server's instance thread sends EXECUTE and reads the
answer itself, the stub's main thread reads EXECUTE and answers itself (no thread between
them). Everything else goes over the channel socket: either end sends from any thread (a lock
keeps messages whole) and receives on one reader thread of its own. A call there is a message
with an id; its answer is `(REPLY, id, ok, value)`, where value is the result, or the
exception when not ok (InferdError pickles whole).
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

# Direct, server -> stub; answered (ok, outcomes or error, messages the stub had sent on the
# channel by then).
EXECUTE = "execute"  # ([request],) -> [outcome]
CLOSE = "close"  # () -> None, once finalize() ran
# Channel, server -> stub.
INIT = "init"  # (python_stub.StubInit,): the first message
STREAM_ANSWER = "stream-answer"  # (stream id, answer, final): a streamed BLS call's answer
# Ops, stub -> server.
INIT_DONE = "init-done"  # (ok, error or None)
CALL = "call"  # (id, method, args): ModelCalls or metrics, run by the server
STREAM = "stream"  # (stream id, request): start a streamed BLS call
STREAM_CANCEL = "stream-cancel"  # (stream id,)
SEND = "send"  # (sink id, item, final): a decoupled response
SEAL = "seal"  # (sink id,)
LOG = "log"  # (logger name, level, text)
# Both ways.
REPLY = "reply"  # (id, ok, value)


class ChannelClosed(ConnectionError):
    """The other end is gone (it exited, or closed the socket)."""


class Channel:
    """One end of the wire, with the calls it made that wait for their reply."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._calls: dict[int, Future[Any]] = {}
        self._calls_lock = threading.Lock()
        self._closed: BaseException | None = None
        self.sent = 0  # messages sent so far

    def send(self, *message: Any) -> None:
        """Raises ChannelClosed when the other end is gone."""
        try:
            with self._send_lock:
                self._connection.send(message)
                self.sent += 1
        except (OSError, EOFError, ValueError) as exc:  # ValueError: our end was closed
            raise ChannelClosed(str(exc)) from None

    def receive(self, timeout: float | None = None) -> tuple[Any, ...]:
        """The next message (one thread only); ChannelClosed at the end, TimeoutError when
        none came in `timeout` seconds."""
        try:
            if timeout is not None and not self._connection.poll(timeout):
                raise TimeoutError
            message: tuple[Any, ...] = self._connection.recv()
        except (OSError, EOFError, ValueError) as exc:
            raise ChannelClosed(str(exc) or "the other end closed the channel") from None
        return message

    def new_id(self) -> int:
        return next(self._ids)

    def call(self, op: str, *args: Any) -> Future[Any]:
        """Send `(op, id, *args)`; the future gets the reply's value or exception."""
        future: Future[Any] = Future()
        call_id = self.new_id()
        with self._calls_lock:
            if self._closed is not None:
                future.set_exception(self._closed)
                return future
            self._calls[call_id] = future
        try:
            self.send(op, call_id, *args)
        except ChannelClosed:
            with self._calls_lock:
                self._calls.pop(call_id, None)
            raise
        return future

    def reply(self, call_id: int, ok: bool, value: Any) -> None:
        self.send(REPLY, call_id, ok, value)

    def resolve(self, call_id: int, ok: bool, value: Any) -> None:
        """A REPLY came in (reader thread)."""
        with self._calls_lock:
            future = self._calls.pop(call_id, None)
        if future is None:
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def fail_calls(self, error: BaseException) -> None:
        """The other end is gone: every waiting call, and every later one, fails with error."""
        with self._calls_lock:
            self._closed = error
            calls, self._calls = self._calls, {}
        for future in calls.values():
            future.set_exception(error)

    def close(self) -> None:
        self._connection.close()
