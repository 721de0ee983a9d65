"""The server side of one HTTP/2 connection (RFC 9113), as an asyncio.Protocol.

The protocol parses frames, keeps the connection's and streams' state and flow-control windows,
and leaves the meaning of requests to a subclass through four hooks: `parse_head` (a decoded
header list to whatever the subclass needs; its result is cached by header-block bytes),
`stream_opened`, `stream_data` and `stream_reset`.

Costs that matter per request: every frame produced during one event-loop callback leaves in a
single `transport.writelines` (uvloop makes that one writev); header blocks that leave the HPACK
dynamic table untouched (clients send the same 8-byte fully indexed block for every call once the
table is primed) skip decoding through a cache keyed on (table generation, block bytes).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

from hpack import Decoder
from hpack.exceptions import HPACKError

from inferd.server.http2_wire import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    GOAWAY_HEAD,
    HEADERS,
    MAX_FRAME_LIMIT,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTING,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    STREAM_ID_MASK,
    U32,
    WINDOW_UPDATE,
    ErrorCode,
    frame,
    frame_header,
    settings_payload,
)

logger = logging.getLogger(__name__)

STREAM_WINDOW = 8 << 20  # what one stream may send before we acknowledge
CONNECTION_WINDOW = 16 << 20  # what the whole connection may send before we acknowledge
MAX_FRAME_SIZE = 1 << 20  # largest frame we accept: big requests arrive in few frames
MAX_HEADER_BLOCK = 256 << 10  # HEADERS + CONTINUATION bytes we buffer for one block
_HEAD_CACHE_SIZE = 512
_HEAD_CACHE_BLOCK = 1024  # larger blocks are decoded every time rather than kept as keys
_KEEPALIVE_PAYLOAD = b"inferdka"


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """Connection management; times in seconds, None = off."""

    max_concurrent_streams: int = 0  # 0: none advertised, no limit
    keepalive_time: float | None = None  # our PING interval
    keepalive_timeout: float = 20.0  # close when a PING goes unanswered this long
    max_age: float | None = None  # GOAWAY after this long
    max_age_grace: float | None = None  # then close after this long (None: when streams end)
    # gRPC's ping policy, as grpc core applies it on a server:
    permit_without_calls: bool = False  # pings (ours and the client's) with no call open
    max_pings_without_data: int = 2  # our keepalive PINGs in a row with nothing sent; 0: any
    min_recv_ping_interval: float = 300.0  # a client PING sooner than this is a strike...
    max_ping_strikes: int = 2  # ...and more strikes than this end the connection; 0: never


class _ConnectionError(Exception):
    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Http2Stream:
    """One request stream. `call` belongs to the subclass (its per-call state)."""

    __slots__ = (
        "call",
        "held",
        "out",
        "out_bytes",
        "recv_window",
        "remote_closed",
        "returnable",
        "send_window",
        "sid",
        "trailers",
        "waiter",
        "withheld",
    )

    def __init__(self, sid: int, send_window: int) -> None:
        self.sid = sid
        self.send_window = send_window
        self.recv_window = STREAM_WINDOW
        self.returnable = 0  # received and handled: given back to the peer in a WINDOW_UPDATE
        self.held = False  # the owner is behind: received data is not given back yet
        self.withheld = 0  # received while held
        self.remote_closed = False
        self.out: deque[memoryview] = deque()  # data held back by flow control
        self.out_bytes = 0
        self.trailers: bytes | None = None  # sent with END_STREAM once `out` drains
        self.waiter: asyncio.Future[None] | None = None
        self.call: Any = None


class Http2Connection(asyncio.Protocol):
    def __init__(self, options: ConnectionOptions) -> None:
        self._options = options
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._preface_seen = False
        self._dead = False  # closed or closing: nothing more is read
        self._streams: dict[int, Http2Stream] = {}
        self._blocked: dict[int, Http2Stream] = {}  # streams with data held by flow control
        self._last_sid = 0
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._send_window = DEFAULT_WINDOW
        self._recv_window = CONNECTION_WINDOW
        self._block: bytearray | None = None  # a header block awaiting CONTINUATION
        self._block_sid = 0
        self._block_end_stream = False
        self._decoder = Decoder()
        self._table_gen = 0
        self._head_cache: dict[tuple[int, bytes], Any] = {}
        self._out: list[bytes | memoryview] = []
        self._flush_scheduled = False
        self._write_paused = False
        self._goaway_sent = False
        self._peer_goaway = False
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._age_timer: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        # Ping policy; sending headers or data resets the counts, as in grpc core. Sends only
        # raise a flag: the counts are reset when a PING next comes or goes.
        self._last_ping_received = -math.inf
        self._ping_strikes = 0
        self._pings_without_data = 0
        self._payload_sent = False
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # ---- hooks for the subclass ------------------------------------------------------------

    def parse_head(self, headers: list[tuple[bytes, bytes]]) -> Any:
        """Turn a request's decoded header list into the object `stream_opened` receives."""
        return headers

    def stream_opened(self, stream: Http2Stream, head: Any, end_stream: bool) -> None:
        """A new request stream; answer with the send_* methods."""

    def stream_data(self, stream: Http2Stream, data: bytes, end_stream: bool) -> None:
        """Request body bytes (padding removed); empty with end_stream when trailers end it."""

    def stream_reset(self, stream: Http2Stream) -> None:
        """The stream is gone without a response: peer reset, protocol error or lost connection."""

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they behave as one.
        self._transport = cast(asyncio.Transport, transport)
        ours = {SETTINGS_ENABLE_PUSH: 0, SETTINGS_INITIAL_WINDOW_SIZE: STREAM_WINDOW}
        ours[SETTINGS_MAX_FRAME_SIZE] = MAX_FRAME_SIZE
        if self._options.max_concurrent_streams > 0:
            ours[SETTINGS_MAX_CONCURRENT_STREAMS] = self._options.max_concurrent_streams
        self._emit(frame(SETTINGS, 0, 0, settings_payload(ours)))
        self._emit(frame(WINDOW_UPDATE, 0, 0, U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)))
        options = self._options
        if options.keepalive_time is not None:
            self._keepalive_timer = self._loop.call_later(options.keepalive_time, self._keepalive)
        if options.max_age is not None:
            self._age_timer = self._loop.call_later(options.max_age, self._age_out)

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        buf = self._buf
        buf += data
        self._flush_scheduled = True  # whatever the frames below produce leaves in one write
        try:
            if not self._preface_seen:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "bad preface")
                    return
                if buf[: len(PREFACE)] != PREFACE:
                    raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "bad preface")
                del buf[: len(PREFACE)]
                self._preface_seen = True
            self._read_frames(buf)
            if self._recv_window < CONNECTION_WINDOW // 2:
                self._emit(
                    frame(WINDOW_UPDATE, 0, 0, U32.pack(CONNECTION_WINDOW - self._recv_window))
                )
                self._recv_window = CONNECTION_WINDOW
        except _ConnectionError as exc:
            self._fail(exc.code, str(exc))
        finally:
            self._flush()

    def pause_writing(self) -> None:
        # The peer stopped reading: stop reading its requests too, and hold streaming writers.
        self._write_paused = True
        if self._transport is not None and not self._dead:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._dead:
            self._transport.resume_reading()
        for stream in list(self._streams.values()):
            self._wake(stream)

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead = True
        for timer in (self._keepalive_timer, self._age_timer, self._ping_deadline):
            if timer is not None:
                timer.cancel()
        streams = list(self._streams.values())
        self._streams.clear()
        self._blocked.clear()
        for stream in streams:
            self._wake(stream)
            self.stream_reset(stream)
        if not self.closed.done():
            self.closed.set_result(None)

    # ---- frames in ---------------------------------------------------------------------------

    def _read_frames(self, buf: bytearray) -> None:
        view = memoryview(buf)
        pos = 0
        try:
            end_all = len(buf)
            while end_all - pos >= 9 and not self._dead:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > MAX_FRAME_SIZE:
                    raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "frame too large")
                end = pos + 9 + length
                if end > end_all:
                    break
                ftype = buf[pos + 3]
                flags = buf[pos + 4]
                sid = U32.unpack_from(buf, pos + 5)[0] & STREAM_ID_MASK
                payload = view[pos + 9 : end].tobytes()
                pos = end
                self._on_frame(ftype, flags, sid, payload)
        finally:
            view.release()
            del buf[:pos]

    def _on_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._block is not None and ftype != CONTINUATION:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "expected CONTINUATION")
        if ftype == DATA:
            self._on_data(flags, sid, payload)
        elif ftype == HEADERS:
            self._on_headers(flags, sid, payload)
        elif ftype == WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif ftype == PING:
            self._on_ping(flags, sid, payload)
        elif ftype == SETTINGS:
            self._on_settings(flags, sid, payload)
        elif ftype == CONTINUATION:
            self._on_continuation(flags, sid, payload)
        elif ftype == RST_STREAM:
            self._on_rst_stream(sid, payload)
        elif ftype == GOAWAY:
            if sid != 0:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
            self._peer_goaway = True  # the peer opens nothing more; finish what is open
            self._close_if_idle()
        elif ftype == PRIORITY:
            if sid == 0:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        elif ftype == PUSH_PROMISE:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # Unknown frame types are ignored (RFC 9113 4.1).

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "bad padding")
            return payload[1 : len(payload) - payload[0]]
        return payload

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)  # flow control counts padding too
        self._recv_window -= size
        if self._recv_window < 0:
            raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")
        stream = self._streams.get(sid)
        if stream is None:
            if sid > self._last_sid:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we already ended or reset: frames in flight are dropped
        if stream.remote_closed:
            self._stream_error(stream, ErrorCode.STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._stream_error(stream, ErrorCode.FLOW_CONTROL_ERROR)
            return
        data = self._unpad(flags, payload)
        end_stream = bool(flags & END_STREAM)
        if end_stream:
            stream.remote_closed = True
        elif stream.held:
            stream.withheld += size
        else:
            self._give_back(stream, size)
        self.stream_data(stream, data, end_stream)

    def hold(self, stream: Http2Stream, held: bool) -> None:
        """Stop (or resume) giving a stream's receive window back to the peer: a stream whose
        owner falls behind then stops the sender after one window, not after all its memory."""
        if held == stream.held:
            return
        stream.held = held
        if not held:
            withheld, stream.withheld = stream.withheld, 0
            if not stream.remote_closed and stream.sid in self._streams:
                self._give_back(stream, withheld)

    def _give_back(self, stream: Http2Stream, size: int) -> None:
        stream.returnable += size
        if stream.recv_window < STREAM_WINDOW // 2 and stream.returnable:
            self._emit(frame(WINDOW_UPDATE, 0, stream.sid, U32.pack(stream.returnable)))
            stream.recv_window += stream.returnable
            stream.returnable = 0

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "short priority fields")
            block = block[5:]
        if flags & END_HEADERS:
            self._on_header_block(sid, block, bool(flags & END_STREAM))
        else:
            self._block = bytearray(block)
            self._block_sid = sid
            self._block_end_stream = bool(flags & END_STREAM)

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        block = self._block
        if block is None or sid != self._block_sid:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._block = None
            self._on_header_block(sid, bytes(block), self._block_end_stream)

    def _on_header_block(self, sid: int, block: bytes, end_stream: bool) -> None:
        head = self._decode(block)  # always: the HPACK table must follow every block
        stream = self._streams.get(sid)
        if stream is not None:  # trailers ending a request
            if stream.remote_closed:
                self._stream_error(stream, ErrorCode.STREAM_CLOSED)
            elif not end_stream:
                self._stream_error(stream, ErrorCode.PROTOCOL_ERROR)
            else:
                stream.remote_closed = True
                self.stream_data(stream, b"", True)
            return
        if sid <= self._last_sid:
            return  # a stream we already ended or reset
        if sid % 2 == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "even stream id from a client")
        self._last_sid = sid
        limit = self._options.max_concurrent_streams
        if self._goaway_sent or (limit > 0 and len(self._streams) >= limit):
            self._emit(frame(RST_STREAM, 0, sid, U32.pack(ErrorCode.REFUSED_STREAM)))
            return
        stream = Http2Stream(sid, self._peer_initial_window)
        stream.remote_closed = end_stream
        self._streams[sid] = stream
        self.stream_opened(stream, head, end_stream)

    def _decode(self, block: bytes) -> Any:
        key = (self._table_gen, block)
        head = self._head_cache.get(key)
        if head is not None:
            return head
        entries = self._decoder.header_table.dynamic_entries
        before = tuple(entries)
        try:
            headers = self._decoder.decode(block, raw=True)
        except HPACKError as exc:
            raise _ConnectionError(ErrorCode.COMPRESSION_ERROR, f"HPACK: {exc}") from exc
        head = self.parse_head(headers)  # type: ignore[arg-type]
        if len(entries) != len(before) or tuple(entries) != before:
            self._table_gen += 1  # the table moved: older cache keys can no longer match
        elif len(block) <= _HEAD_CACHE_BLOCK:
            if len(self._head_cache) >= _HEAD_CACHE_SIZE:
                self._head_cache.clear()
            self._head_cache[key] = head
        return head

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length")
        for offset in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "initial window")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "window overflow")
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= MAX_FRAME_LIMIT:
                    raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE")
                self._peer_max_frame = value
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH")
            # HEADER_TABLE_SIZE binds encoders only, and ours keeps no table.
        self._emit(frame(SETTINGS, ACK, 0))
        self._pump_blocked()

    def _on_ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PING length")
        if not flags & ACK:
            if self._too_many_pings():
                logger.info("closing HTTP/2 connection: too many pings")
                debug = b"too_many_pings"  # grpc clients then slow their keepalive down
                goaway = GOAWAY_HEAD.pack(self._last_sid, ErrorCode.ENHANCE_YOUR_CALM) + debug
                self._emit(frame(GOAWAY, 0, 0, goaway))
                self._dead = True
                return
            self._emit(frame(PING, ACK, 0, payload))
        elif payload == _KEEPALIVE_PAYLOAD and self._ping_deadline is not None:
            self._ping_deadline.cancel()
            self._ping_deadline = None

    def _too_many_pings(self) -> bool:
        """A client PING too soon after the last one is a strike (grpc core's ping-abuse rule;
        with no call open and pings not permitted without calls, "too soon" is two hours)."""
        self._forgive_pings()
        options = self._options
        now = self._loop.time()
        idle = not options.permit_without_calls and not self._streams
        allowed = self._last_ping_received + (7200.0 if idle else options.min_recv_ping_interval)
        self._last_ping_received = now
        if allowed <= now:
            return False
        self._ping_strikes += 1
        return options.max_ping_strikes != 0 and self._ping_strikes > options.max_ping_strikes

    def _forgive_pings(self) -> None:
        """Headers or data went out since the last PING: the peer's pings are welcome again,
        and ours may go."""
        if self._payload_sent:
            self._payload_sent = False
            self._last_ping_received = -math.inf
            self._ping_strikes = 0
            self._pings_without_data = 0

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = U32.unpack(payload)[0] & STREAM_ID_MASK
        if sid == 0:
            if increment == 0:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "window overflow")
            self._pump_blocked()
            return
        stream = self._streams.get(sid)
        if stream is None:
            return
        if increment == 0:
            self._stream_error(stream, ErrorCode.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream, ErrorCode.FLOW_CONTROL_ERROR)
        elif stream.out or stream.trailers is not None:
            self._pump(stream)

    def _on_rst_stream(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM length")
        if sid > self._last_sid:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self._streams.get(sid)
        if stream is not None:
            self._drop(stream)
            self.stream_reset(stream)

    # ---- frames out --------------------------------------------------------------------------

    def send_headers(self, stream: Http2Stream, block: bytes) -> None:
        """Response headers (a complete HPACK block) without END_STREAM."""
        self._emit_headers(stream.sid, block, False)

    def send_data(self, stream: Http2Stream, *chunks: bytes) -> None:
        """Body bytes; what the windows do not allow yet is held and sent on WINDOW_UPDATE."""
        size = sum(map(len, chunks))
        self._payload_sent = True
        if (
            not stream.out
            and size <= stream.send_window
            and size <= self._send_window
            and size <= self._peer_max_frame
        ):
            stream.send_window -= size
            self._send_window -= size
            self._emit(frame_header(DATA, 0, stream.sid, size))
            self._out.extend(chunks)
            return
        for chunk in chunks:
            stream.out.append(memoryview(chunk))
        stream.out_bytes += size
        self._blocked[stream.sid] = stream
        self._pump(stream)

    def send_trailers(self, stream: Http2Stream, block: bytes) -> None:
        """The last header block, with END_STREAM, after any held data; ends our side."""
        if stream.out:
            stream.trailers = block
        else:
            self._end(stream, block)

    def writable(self, stream: Http2Stream) -> bool:
        return not stream.out and not self._write_paused

    async def wait_writable(self, stream: Http2Stream) -> None:
        """Wait until the stream's held data has left and the peer reads again (or it ends)."""
        while (stream.out or self._write_paused) and self._streams.get(stream.sid) is stream:
            waiter = stream.waiter = self._loop.create_future()
            await waiter

    def reset_stream(self, stream: Http2Stream, code: ErrorCode) -> None:
        if self._streams.get(stream.sid) is stream:
            self._drop(stream)
            self._emit(frame(RST_STREAM, 0, stream.sid, U32.pack(code)))

    def goaway(self) -> None:
        """Graceful: refuse new streams, finish open ones, then close."""
        if self._dead or self._goaway_sent:
            return
        self._goaway_sent = True
        self._emit(frame(GOAWAY, 0, 0, GOAWAY_HEAD.pack(self._last_sid, ErrorCode.NO_ERROR)))
        self._close_if_idle()

    def abort(self) -> None:
        """Close now; open streams are reset (their calls cancelled through stream_reset)."""
        transport = self._transport
        if transport is None or self.closed.done():
            return
        if not transport.is_closing():
            self._flush()
        transport.abort()  # also ends a close still waiting on a peer that stopped reading

    @property
    def open_streams(self) -> list[Http2Stream]:
        return list(self._streams.values())

    def _emit_headers(self, sid: int, block: bytes, end_stream: bool) -> None:
        self._payload_sent = True
        flags = END_STREAM if end_stream else 0
        limit = self._peer_max_frame
        if len(block) <= limit:
            self._emit(frame(HEADERS, flags | END_HEADERS, sid, block))
            return
        self._emit(frame(HEADERS, flags, sid, block[:limit]))
        for start in range(limit, len(block), limit):
            last = start + limit >= len(block)
            self._emit(
                frame(CONTINUATION, END_HEADERS if last else 0, sid, block[start : start + limit])
            )

    def _pump(self, stream: Http2Stream) -> None:
        out = stream.out
        while out:
            size = min(
                stream.out_bytes, stream.send_window, self._send_window, self._peer_max_frame
            )
            if size <= 0:
                return
            self._emit(frame_header(DATA, 0, stream.sid, size))
            stream.send_window -= size
            self._send_window -= size
            stream.out_bytes -= size
            while size:
                chunk = out[0]
                if len(chunk) <= size:
                    self._out.append(chunk)
                    out.popleft()
                    size -= len(chunk)
                else:
                    self._out.append(chunk[:size])
                    out[0] = chunk[size:]
                    size = 0
        self._blocked.pop(stream.sid, None)
        if stream.trailers is not None:
            trailers, stream.trailers = stream.trailers, None
            self._end(stream, trailers)
        self._wake(stream)

    def _pump_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._send_window <= 0:
                return
            self._pump(stream)

    def _end(self, stream: Http2Stream, trailers: bytes) -> None:
        self._emit_headers(stream.sid, trailers, True)
        if not stream.remote_closed:
            # Answered before the request ended: let the client stop sending (RFC 9113 8.1).
            self._emit(frame(RST_STREAM, 0, stream.sid, U32.pack(ErrorCode.NO_ERROR)))
        self._drop(stream)

    def _drop(self, stream: Http2Stream) -> None:
        self._streams.pop(stream.sid, None)
        self._blocked.pop(stream.sid, None)
        stream.out.clear()
        self._wake(stream)
        self._close_if_idle()

    def _stream_error(self, stream: Http2Stream, code: ErrorCode) -> None:
        self.reset_stream(stream, code)
        self.stream_reset(stream)

    @staticmethod
    def _wake(stream: Http2Stream) -> None:
        waiter = stream.waiter
        if waiter is not None:
            stream.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _emit(self, data: bytes) -> None:
        self._out.append(data)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what is pending in one call, then close once the connection is done. Never
        hands `writelines` an empty chunk: asyncio's own transport (3.12+) keeps it buffered
        forever, and the connection then never closes (CPython gh-155888)."""
        self._flush_scheduled = False
        out = self._out
        transport = self._transport
        if transport is None or transport.is_closing():
            self._out = []
            return
        if out:
            self._out = []
            transport.writelines(out)
        if self._dead:
            transport.close()

    # ---- connection management ---------------------------------------------------------------

    def _close_if_idle(self) -> None:
        if (self._goaway_sent or self._peer_goaway) and not self._streams and not self._dead:
            self._dead = True
            self._schedule_flush()  # the flush writes what is pending, then closes

    def _fail(self, code: ErrorCode, reason: str) -> None:
        logger.info("closing HTTP/2 connection: %s (%s)", reason, code.name)
        self._emit(frame(GOAWAY, 0, 0, GOAWAY_HEAD.pack(self._last_sid, code)))
        self._dead = True  # the flush at the end of data_received writes GOAWAY, then closes

    def _keepalive(self) -> None:
        if self._dead:
            return
        self._forgive_pings()
        options = self._options
        # As grpc core: no keepalive PING with no call open unless permitted, and at most
        # max_pings_without_data of them before something else is sent.
        allowed = options.permit_without_calls or self._streams
        limit = options.max_pings_without_data
        if allowed and (limit == 0 or self._pings_without_data < limit):
            self._pings_without_data += 1
            self._emit(frame(PING, 0, 0, _KEEPALIVE_PAYLOAD))
            if self._ping_deadline is None:
                self._ping_deadline = self._loop.call_later(
                    options.keepalive_timeout, self._keepalive_expired
                )
        assert options.keepalive_time is not None
        self._keepalive_timer = self._loop.call_later(options.keepalive_time, self._keepalive)

    def _keepalive_expired(self) -> None:
        logger.info("closing HTTP/2 connection: keepalive PING unanswered")
        self.abort()

    def _age_out(self) -> None:
        self.goaway()
        grace = self._options.max_age_grace
        if grace is not None:
            self._age_timer = self._loop.call_later(grace, self.abort)
