"""The wire between the server and a python model's stub process (python_process.py is the
server's end, python_stub.py the stub's): pickled tuples `(op, ...)` over two sockets.

Batches go over the direct socket: the server sends EXECUTE from the event loop (or, for a big
batch, from the instance's thread) and reads the answers on the loop (FrameReader), or, before
a worker attaches the instance (warmup), on the calling thread; the stub's main thread reads
EXECUTE and answers itself (no thread between them). Everything else goes over the channel
socket: either end sends from any thread (a lock keeps messages whole) and receives on one
reader thread of its own. A call there is a message with an id; its answer is `(REPLY, id, ok,
value)`, where value is the result, or the exception when not ok (InferdError pickles whole).

Tensors (a request's inputs, a response's outputs) travel packed (pack_tensors).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import pickle
import select
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, cast

import numpy as np

from inferd.backends.base import OutputsWithParameters


class Op:
    """What a message is: its first item (plain strings, cheap to pickle)."""

    # Direct, server -> stub; answered (ok, outcomes or error, messages the stub had sent on
    # the channel by then).
    EXECUTE = "execute"  # ([request], the server's log levels) -> [outcome]
    CLOSE = "close"  # () -> None, once finalize() ran
    # Channel, server -> stub.
    INIT = "init"  # (python_stub.StubInit, the server's log levels): the first message
    STREAM_ANSWER = "stream-answer"  # (stream id, answer, final): a streamed BLS call's answer
    # Channel, stub -> server.
    INIT_DONE = "init-done"  # (ok, error or None)
    CALL = "call"  # (id, method, args): ModelCalls or metrics, run by the server
    STREAM = "stream"  # (stream id, request): start a streamed BLS call
    STREAM_CANCEL = "stream-cancel"  # (stream id,)
    SEND = "send"  # (sink id, item, final): a decoupled response
    SEAL = "seal"  # (sink id,)
    LOG = "log"  # (logger name, level, text)
    # Channel, both ways.
    REPLY = "reply"  # (id, ok, value)


_HEAD = struct.Struct("<QI")  # the pickle's length, the number of buffers
_SIZE = struct.Struct("<Q")  # a buffer's length
_IN_BAND = 64 * 1024  # smaller buffers travel in the pickle
_READ_BUFFER = 256 * 1024


class ChannelClosed(ConnectionError):
    """The other end is gone (it exited, or closed the socket)."""


class UnreadableMessage(Exception):
    """A whole message came in, but it does not unpickle here (a class only the other end
    can import); the channel reads on. `head` is its op and id when those could be read all
    the same (a call, whose caller still waits for an answer), else empty."""

    def __init__(self, why: str, head: tuple[Any, ...] = ()) -> None:
        super().__init__(why)
        self.head = head


class Channel:
    """One end of the wire, with the calls it made that wait for their reply.

    A message is a frame: the pickle's length, how many buffers follow it, their sizes, the
    pickle, then the buffers. Tensors above _IN_BAND bytes travel as such buffers (pickle
    protocol 5 out of band): sent straight from the array's memory and read straight into the
    memory of the array that receives them, one copy each way through the kernel."""

    def __init__(self, end: socket.socket) -> None:
        self._socket = end
        self._reader = cast(io.BufferedReader, end.makefile("rb", buffering=_READ_BUFFER))
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._calls: dict[int, Future[Any]] = {}
        self._calls_lock = threading.Lock()
        self._closed: BaseException | None = None
        self.sent = 0  # messages sent so far

    def send(self, *message: Any) -> None:
        """Raises ChannelClosed when the other end is gone."""
        self._write(*_frame(message))

    def send_small(self, limit: int, *message: Any) -> bool:
        """Send `message` only when its frame holds every tensor in it and is at most `limit`
        bytes: several frames that small fit a socket's buffer, so sending one never waits
        for the other end to read. False, and nothing sent, otherwise."""
        head, buffers = _frame(message)
        if buffers or len(head) > limit:
            return False
        self._write(head, buffers)
        return True

    def _write(self, head: bytes, buffers: list[memoryview]) -> None:
        try:
            with self._send_lock:
                self._socket.sendall(head)
                for view in buffers:
                    self._socket.sendall(view)
                self.sent += 1
        except (OSError, ValueError) as exc:  # ValueError: our end was closed
            raise ChannelClosed(str(exc)) from None

    def receive(self, timeout: float | None = None) -> tuple[Any, ...]:
        """The next message (one thread only); ChannelClosed at the end, TimeoutError when
        none came in `timeout` seconds (for a channel with nothing else unread)."""
        try:
            if timeout is not None and not select.select([self._socket], [], [], timeout)[0]:
                raise TimeoutError
            length, count = _HEAD.unpack(self._read(_HEAD.size))
            sizes = [_SIZE.unpack(self._read(_SIZE.size))[0] for _ in range(count)]
            data = self._read(length)
            buffers = [self._read_into(bytearray(size)) for size in sizes]
        except (OSError, EOFError, ValueError) as exc:
            raise ChannelClosed(str(exc) or "the other end closed the channel") from None
        message = _loads(data, buffers)
        if isinstance(message, UnreadableMessage):  # the whole frame is read: read on
            raise message
        return message

    def _read(self, size: int) -> bytes:
        data = self._reader.read(size)
        if len(data) < size:
            raise EOFError("the other end closed the channel")
        return data

    def _read_into(self, buffer: bytearray) -> bytearray:
        view, got = memoryview(buffer), 0
        while got < len(buffer):
            read = self._reader.readinto(view[got:])
            if not read:
                raise EOFError("the other end closed the channel")
            got += read
        return buffer

    def fileno(self) -> int:
        return self._socket.fileno()

    def add_reader(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        """`callback` on `loop` each time something has arrived (it reads with read_available
        or read_into, which never wait). uvloop's poller (libuv's) makes the socket
        non-blocking; it is made blocking again, as send() and receive() expect: a frame
        bigger than the socket's buffer must wait for the other end to read it, not fail
        half-sent."""
        loop.add_reader(self.fileno(), callback)
        self._socket.setblocking(True)

    def read_into(self, view: memoryview) -> int | None:
        """read_available(), into `view`: how many bytes (0 at the end)."""
        try:
            return self._socket.recv_into(view, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            return 0

    def read_available(self) -> bytes | None:
        """What has arrived, up to a read buffer's worth, without waiting: None when nothing
        has, b"" at the end (for a reader on the event loop)."""
        try:
            return self._socket.recv(_READ_BUFFER, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            return b""

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
        self.send(Op.REPLY, call_id, ok, value)

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
        self._reader.close()
        self._socket.close()


Message = tuple[Any, ...] | UnreadableMessage  # what FrameReader gives for each frame


class FrameReader:
    """Messages from bytes as they arrive, in any pieces (a socket read on the event loop,
    which must not wait for a whole frame). Once a frame's head is in, its pickle and
    buffers are allocated at their size and filled in place: a big buffer is read straight
    into the array that receives it, as Channel.receive() does."""

    def __init__(self) -> None:
        self._pending = bytearray()  # arrived, not yet placed
        self._parts: list[bytearray] = []  # the frame being filled: its pickle, its buffers
        self._index = 0  # the part being filled
        self._filled = 0  # of it

    def read(self, channel: Channel) -> tuple[list[Message], bool] | None:
        """One read of what has arrived on `channel`: the messages it completes, and whether
        the channel ended; None when nothing had arrived."""
        if self._parts and not self._pending:
            part = self._parts[self._index]
            if len(part) - self._filled >= _IN_BAND:  # straight into the part
                got = channel.read_into(memoryview(part)[self._filled :])
                if got is None:
                    return None
                self._filled += got
                return self._advance(), got == 0
        chunk = channel.read_available()
        if chunk is None:
            return None
        return self.feed(chunk), not chunk

    def feed(self, chunk: bytes) -> list[Message]:
        """The messages that `chunk` completes, in order; in place of a message that does not
        unpickle here (a class only the other end can import), why."""
        messages: list[Message] = []
        if not self._parts and not self._pending:  # whole small frames: read in place
            view, start = memoryview(chunk), 0
            while len(view) - start >= _HEAD.size:
                length, count = _HEAD.unpack_from(view, start)
                end = start + _HEAD.size + length
                if count or end > len(view):
                    break
                messages.append(_loads(view[start + _HEAD.size : end]))
                start = end
            self._pending += view[start:]
        else:
            self._pending += chunk
        return messages + self._advance() if self._pending else messages

    def _advance(self) -> list[Message]:
        messages: list[Message] = []
        pending = self._pending
        while True:
            if not self._parts and not self._start(pending):
                return messages
            part = self._parts[self._index]
            take = min(len(part) - self._filled, len(pending))
            if take:
                part[self._filled : self._filled + take] = pending[:take]
                del pending[:take]
                self._filled += take
            if self._filled < len(part):
                return messages
            self._index, self._filled = self._index + 1, 0
            if self._index == len(self._parts):
                data, *buffers = self._parts
                self._parts, self._index = [], 0
                messages.append(_loads(data, buffers))

    def _start(self, pending: bytearray) -> bool:
        """A frame's head from `pending`, its parts allocated; False until it is all in."""
        if len(pending) < _HEAD.size:
            return False
        length, count = _HEAD.unpack_from(pending)
        end = _HEAD.size + _SIZE.size * count
        if len(pending) < end:
            return False
        sizes = struct.unpack_from(f"<{count}Q", pending, _HEAD.size)
        del pending[:end]
        self._parts = [bytearray(length), *(bytearray(size) for size in sizes)]
        return True


def _loads(data: bytes | bytearray | memoryview, buffers: list[bytearray] | None = None) -> Message:
    try:
        message: tuple[Any, ...] = pickle.loads(data, buffers=buffers)
    except Exception as exc:
        return _unreadable(data, buffers, exc)
    return message


def _unreadable(
    data: bytes | bytearray | memoryview, buffers: list[bytearray] | None, error: Exception
) -> UnreadableMessage:
    """Why a message does not unpickle, and its head, read again with stand-ins for the
    classes that do not import here."""
    why = f"{type(error).__name__}: {error}"
    unpickler = _WithStandIns(io.BytesIO(data), buffers=buffers)
    try:
        message = unpickler.load()
    except Exception:
        message = None
    if unpickler.missing:
        why = f"it holds a {unpickler.missing[0]}, which does not import here ({why})"
    head = tuple(message[:2]) if type(message) is tuple else ()
    return UnreadableMessage(why, head)


class _StandIn:
    """In place of an object whose class does not import."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _WithStandIns(pickle.Unpickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.missing: list[str] = []  # the classes stood in for

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            self.missing.append(f"{module}.{name}")
            return _StandIn


def _frame(message: tuple[Any, ...]) -> tuple[bytes, list[memoryview]]:
    """The frame's head (lengths and pickle) and the buffers that follow it."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if view.nbytes < _IN_BAND:
            return True  # small: in the pickle, where it costs no send of its own
        buffers.append(view)
        return False

    data = pickle.dumps(message, protocol=5, buffer_callback=out_of_band)
    sizes = b"".join(_SIZE.pack(view.nbytes) for view in buffers)
    return _HEAD.pack(len(data), len(buffers)) + sizes + data, buffers


# A packed tensor: (dtype, shape, its bytes); an array that does not pack travels as itself.
PackedTensors = dict[str, Any]
_PLAIN_KINDS = frozenset("biufc")  # bool, integers, floats, complex: their bytes say it all


def pack_tensors(tensors: Mapping[str, np.ndarray]) -> PackedTensors:
    """Plain arrays as (dtype, shape, buffer), which pickles several times faster than the
    array (numpy reduces an array and its dtype in Python, and its load looks the rebuilding
    functions up by name): most of what a small batch's trip to the stub costs. The buffer
    still goes out of band when it is big. Response parameters stay with their outputs."""
    packed: PackedTensors = {name: _packed(array) for name, array in tensors.items()}
    if isinstance(tensors, OutputsWithParameters):
        return tensors.around(packed)
    return packed


def _packed(array: np.ndarray) -> np.ndarray | tuple[str, tuple[int, ...], Any]:
    if type(array) is np.ndarray and array.dtype.kind in _PLAIN_KINDS and array.flags.c_contiguous:
        return array.dtype.str, array.shape, pickle.PickleBuffer(array.data)
    return array  # objects (BYTES), strided views, subclasses: numpy pickles them


def unpack_tensors(packed: Mapping[str, Any]) -> dict[str, np.ndarray]:
    tensors = {
        name: _unpacked(*value) if type(value) is tuple else value for name, value in packed.items()
    }
    if isinstance(packed, OutputsWithParameters):
        return packed.around(tensors)
    return tensors


def _unpacked(dtype: str, shape: tuple[int, ...], buffer: Any) -> np.ndarray:
    # A read-only array's buffer comes back read-only: the model may write to its inputs.
    if type(buffer) is memoryview:  # out of band: the bytearray it was read into
        whole = type(buffer.obj) is bytearray and len(buffer.obj) == buffer.nbytes
        buffer = buffer.obj if whole else bytearray(buffer)
    elif type(buffer) is bytes:  # in the pickle: a copy
        buffer = bytearray(buffer)
    return np.frombuffer(buffer, dtype).reshape(shape)
