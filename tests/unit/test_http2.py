"""Frame-level behaviour of the HTTP/2 layer, driven over a raw socket with hand-made frames."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hpack import Decoder, Encoder

from inferd.server import http2_wire as w
from inferd.server.grpc_transport import Http2GrpcServer
from inferd.server.settings import GrpcChannel
from tests.grpc_echo import BIDI, UNARY, Recorder, echo_methods

Frame = tuple[int, int, int, bytes]  # type, flags, stream id, payload


def message(body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(body)) + body


def request_headers(path: str = UNARY, **extra: str) -> list[tuple[str, str]]:
    fields = [(":method", "POST"), (":scheme", "http"), (":path", path)]
    fields += [(":authority", "test"), ("content-type", "application/grpc"), ("te", "trailers")]
    return fields + list(extra.items())


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.decoder = Decoder()

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    def headers(self, sid: int, fields: list[tuple[str, str]], flags: int = w.END_HEADERS) -> bytes:
        return w.frame(w.HEADERS, flags, sid, self.encoder.encode(fields))

    async def frame(self) -> Frame:
        head = await asyncio.wait_for(self.reader.readexactly(9), 2)
        length = int.from_bytes(head[:3], "big")
        payload = await asyncio.wait_for(self.reader.readexactly(length), 2)
        return head[3], head[4], int.from_bytes(head[5:], "big") & w.STREAM_ID_MASK, payload

    async def frames_for(self, seconds: float) -> list[Frame]:
        """Every frame that comes within `seconds`."""
        frames: list[Frame] = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    frames.append(await self.frame())
        except TimeoutError:
            pass
        return frames

    async def until(self, ftype: int, sid: int | None = None) -> Frame:
        while True:
            got = await self.frame()
            if got[0] == ftype and (sid is None or got[2] == sid):
                return got

    async def response(self, sid: int) -> tuple[list[dict[bytes, bytes]], bytes]:
        """Header blocks and body bytes of one stream, up to END_STREAM."""
        blocks: list[dict[bytes, bytes]] = []
        body = b""
        while True:
            ftype, flags, got_sid, payload = await self.frame()
            if got_sid != sid:
                continue
            if ftype == w.HEADERS:
                blocks.append(dict(self.decoder.decode(payload, raw=True)))
            elif ftype == w.DATA:
                body += payload
            if ftype in (w.HEADERS, w.DATA) and flags & w.END_STREAM:
                return blocks, body

    async def closed(self) -> bool:
        try:
            while await asyncio.wait_for(self.reader.read(65536), 2):
                pass
        except ConnectionResetError:
            pass
        return True


@pytest.fixture
async def server() -> AsyncIterator[tuple[Http2GrpcServer, int, Recorder]]:
    recorder = Recorder()
    grpc_server = Http2GrpcServer(echo_methods(recorder), GrpcChannel(max_concurrent_streams=4))
    port = await grpc_server.start("127.0.0.1", 0)
    yield grpc_server, port, recorder
    await grpc_server.stop(0)


@pytest.fixture
async def client(server: tuple[Http2GrpcServer, int, Recorder]) -> AsyncIterator[RawClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    raw = RawClient(reader, writer)
    raw.send(w.PREFACE, w.frame(w.SETTINGS, 0, 0))
    yield raw
    writer.close()


def settings_of(payload: bytes) -> dict[int, int]:
    return dict(w.SETTING.unpack_from(payload, at) for at in range(0, len(payload), 6))


async def goaway_code(client: RawClient) -> int:
    _, _, _, payload = await client.until(w.GOAWAY)
    return int(w.GOAWAY_HEAD.unpack_from(payload)[1])


async def test_settings_ack_and_ping(client: RawClient) -> None:
    ftype, flags, _, payload = await client.frame()
    assert (ftype, flags) == (w.SETTINGS, 0)
    ours = settings_of(payload)
    assert ours[w.SETTINGS_INITIAL_WINDOW_SIZE] > w.DEFAULT_WINDOW
    assert ours[w.SETTINGS_MAX_CONCURRENT_STREAMS] == 4
    client.send(w.frame(w.PING, 0, 0, b"12345678"))
    assert await client.until(w.SETTINGS) == (w.SETTINGS, w.ACK, 0, b"")
    assert await client.until(w.PING) == (w.PING, w.ACK, 0, b"12345678")


async def test_unary_frames_and_header_cache(client: RawClient) -> None:
    for sid in (1, 3, 5):  # first block indexes into the table; later ones are fully indexed
        client.send(
            client.headers(sid, request_headers()),
            w.frame(w.DATA, w.END_STREAM, sid, message(b"hi %d" % sid)),
        )
        blocks, body = await client.response(sid)
        assert blocks[0][b":status"] == b"200"
        assert blocks[0][b"content-type"] == b"application/grpc"
        assert blocks[1] == {b"grpc-status": b"0"}
        assert body == message(b"hi %d" % sid)


async def test_padding_priority_continuation_and_split_messages(client: RawClient) -> None:
    block = client.encoder.encode(request_headers(BIDI))
    padded = bytes((3,)) + b"\x00\x00\x00\x00\x10" + block[:5] + b"\x00" * 3
    client.send(
        w.frame(w.HEADERS, w.PADDED | w.PRIORITY_FLAG, 1, padded),
        w.frame(w.CONTINUATION, w.END_HEADERS, 1, block[5:]),
        w.frame(0xFA, 0, 0, b"unknown frame types are ignored"),
    )
    stream = message(b"one") + message(b"two") + message(b"three")
    client.send(
        w.frame(w.DATA, w.PADDED, 1, bytes((2,)) + stream[:4] + b"\x00\x00"),
        w.frame(w.DATA, 0, 1, stream[4:15]),
        w.frame(w.DATA, w.END_STREAM, 1, stream[15:]),
    )
    _, body = await client.response(1)
    assert body == message(b"echo:one") + message(b"echo:two") + message(b"echo:three")


async def test_outbound_flow_control_queues_and_resumes(client: RawClient) -> None:
    settings = w.settings_payload({w.SETTINGS_INITIAL_WINDOW_SIZE: 100})
    client.send(w.frame(w.SETTINGS, 0, 0, settings))
    client.send(
        client.headers(1, request_headers()),
        w.frame(w.DATA, w.END_STREAM, 1, message(b"big:250")),
    )
    got = await client.until(w.DATA, 1)
    assert len(got[3]) == 100  # the stream window, no more
    client.send(w.frame(w.WINDOW_UPDATE, 0, 1, struct.pack(">I", 100)))
    assert len((await client.until(w.DATA, 1))[3]) == 100
    client.send(w.frame(w.WINDOW_UPDATE, 0, 1, struct.pack(">I", 1000)))
    rest = await client.until(w.DATA, 1)
    assert len(rest[3]) == 55
    trailers = await client.until(w.HEADERS, 1)
    assert trailers[1] & w.END_STREAM


async def test_a_stream_whose_handler_falls_behind_stops_the_sender(
    server: tuple[Http2GrpcServer, int, Recorder], client: RawClient
) -> None:
    recorder = server[2]
    most = 2**31 - 1  # the client takes every answer at once: only inbound flow matters here
    client.send(
        w.frame(w.SETTINGS, 0, 0, w.settings_payload({w.SETTINGS_INITIAL_WINDOW_SIZE: most})),
        w.frame(w.WINDOW_UPDATE, 0, 0, struct.pack(">I", most - w.DEFAULT_WINDOW)),
        client.headers(1, request_headers(BIDI)),
        w.frame(w.DATA, 0, 1, message(b"hold")),
    )
    await asyncio.wait_for(recorder.started.wait(), 2)
    chunk = message(b"z" * 200_000)
    for _ in range(40):  # 8 MB, within the stream's window; the handler reads none of it
        client.send(w.frame(w.DATA, 0, 1, chunk))
    await client.writer.drain()

    answers = bytearray()

    async def stream_window_updates(seconds: float) -> int:
        frames = [f for f in await client.frames_for(seconds) if f[2] == 1]
        answers.extend(b"".join(payload for ftype, _, _, payload in frames if ftype == w.DATA))
        return sum(ftype == w.WINDOW_UPDATE for ftype, _, _, _ in frames)

    # Past STREAM_BACKLOG unread requests the window stays spent: the sender is held back
    # (without the hold, half a window read would already have been given back).
    assert await stream_window_updates(0.5) == 0
    recorder.release.set()
    assert await stream_window_updates(1.0) >= 1  # caught up: the window comes back
    client.send(w.frame(w.DATA, w.END_STREAM, 1, message(b"last")))
    _, body = await client.response(1)
    assert (answers + body).count(b"echo:") == 42  # nothing held back was lost


async def test_client_reset_cancels_handler(
    client: RawClient, server: tuple[Http2GrpcServer, int, Recorder]
) -> None:
    client.send(
        client.headers(1, request_headers()),
        w.frame(w.DATA, w.END_STREAM, 1, message(b"sleep:30")),
    )
    await asyncio.wait_for(server[2].started.wait(), 2)
    client.send(w.frame(w.RST_STREAM, 0, 1, struct.pack(">I", w.ErrorCode.CANCEL)))
    await asyncio.wait_for(server[2].cancelled.wait(), 2)


async def test_refused_stream_over_limit(client: RawClient) -> None:
    for sid in (1, 3, 5, 7, 9):
        client.send(client.headers(sid, request_headers(BIDI)))
    _, _, sid, payload = await client.until(w.RST_STREAM)
    assert (sid, struct.unpack(">I", payload)[0]) == (9, w.ErrorCode.REFUSED_STREAM)


@pytest.mark.parametrize(
    ("fields", "status", "grpc_status"),
    [
        ([(":method", "POST"), (":path", UNARY), ("content-type", "text/plain")], b"415", b"13"),
        (
            [(":method", "GET"), (":path", UNARY), ("content-type", "application/grpc")],
            b"405",
            b"13",
        ),
        (request_headers("/nope/Nope"), b"200", b"12"),
        (request_headers(**{"grpc-encoding": "snappy"}), b"200", b"12"),
    ],
)
async def test_refused_by_headers(
    client: RawClient, fields: list[tuple[str, str]], status: bytes, grpc_status: bytes
) -> None:
    client.send(client.headers(1, fields))
    blocks, body = await client.response(1)
    assert (blocks[0][b":status"], blocks[0][b"grpc-status"], body) == (status, grpc_status, b"")
    _, _, _, payload = await client.until(w.RST_STREAM, 1)  # answered early: NO_ERROR reset
    assert struct.unpack(">I", payload)[0] == w.ErrorCode.NO_ERROR


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (
            w.frame(w.PUSH_PROMISE, w.END_HEADERS, 1, b"\x00\x00\x00\x02"),
            w.ErrorCode.PROTOCOL_ERROR,
        ),
        (w.frame(w.HEADERS, w.END_HEADERS, 2, b"\x82"), w.ErrorCode.PROTOCOL_ERROR),
        (w.frame(w.HEADERS, w.END_HEADERS, 1, b"\xff\xff\xff\xff"), w.ErrorCode.COMPRESSION_ERROR),
        (w.frame(w.PING, 0, 0, b"short"), w.ErrorCode.FRAME_SIZE_ERROR),
        (w.frame_header(w.DATA, 0, 1, (1 << 20) + 1), w.ErrorCode.FRAME_SIZE_ERROR),
        (w.frame(w.DATA, 0, 7, b"x"), w.ErrorCode.PROTOCOL_ERROR),  # an idle stream
        (w.frame(w.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), w.ErrorCode.PROTOCOL_ERROR),
    ],
)
async def test_connection_errors_goaway_and_close(
    client: RawClient, frame: bytes, code: int
) -> None:
    client.send(frame)
    assert await goaway_code(client) == code
    assert await client.closed()


async def test_continuation_interrupted_is_protocol_error(client: RawClient) -> None:
    client.send(client.headers(1, request_headers(), flags=0), w.frame(w.PING, 0, 0, b"8 bytes!"))
    assert await goaway_code(client) == w.ErrorCode.PROTOCOL_ERROR


async def test_garbage_preface_closes(server: tuple[Http2GrpcServer, int, Recorder]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    writer.write(b"\x16\x03\x01\x02\x00" + b"\x00" * 40)  # a TLS hello, say
    assert await RawClient(reader, writer).closed()
    writer.close()


async def test_stop_sends_goaway_with_last_stream(
    client: RawClient, server: tuple[Http2GrpcServer, int, Recorder]
) -> None:
    client.send(
        client.headers(1, request_headers()),
        w.frame(w.DATA, w.END_STREAM, 1, message(b"sleep:0.2")),
    )
    await asyncio.wait_for(server[2].started.wait(), 2)
    stopping = asyncio.ensure_future(server[0].stop(5))
    _, _, _, payload = await client.until(w.GOAWAY)
    assert w.GOAWAY_HEAD.unpack(payload) == (1, w.ErrorCode.NO_ERROR)
    blocks, body = await client.response(1)  # the accepted call still completes
    assert body == message(b"sleep:0.2") and blocks[-1][b"grpc-status"] == b"0"
    await stopping
    assert await client.closed()


async def test_stop_ends_a_connection_whose_peer_stopped_reading(
    server: tuple[Http2GrpcServer, int, Recorder],
) -> None:
    """Stopping closes the idle connection, but its last answer cannot leave while the peer
    reads nothing: past the grace the close is cut, or the connection would stay forever (and
    on Python 3.12+ `stop()` with it)."""
    grpc_server, port, _ = server
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel takes little
    sock.connect(("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    client = RawClient(reader, writer)
    window = 2**25  # the answer may all be sent at once: more than kernel buffers hold
    setting = w.SETTING.pack(w.SETTINGS_INITIAL_WINDOW_SIZE, window)
    client.send(w.PREFACE, w.frame(w.SETTINGS, 0, 0, setting))
    client.send(w.frame(w.WINDOW_UPDATE, 0, 0, w.U32.pack(window)))
    client.send(
        client.headers(1, request_headers()),
        w.frame(w.DATA, w.END_STREAM, 1, message(b"big:16000000")),
    )
    async with asyncio.timeout(5):
        while not grpc_server.connections:
            await asyncio.sleep(0.01)
        (conn,) = grpc_server.connections
        while conn.open_streams:  # until the answer is written: the connection is idle
            await asyncio.sleep(0.01)
    await asyncio.wait_for(grpc_server.stop(0), 5)
    assert conn.closed.done()
    writer.close()


def test_hpack_integers_and_literals() -> None:
    assert w.hpack_int(10, 5) == b"\x0a"
    assert w.hpack_int(1337, 5) == b"\x1f\x9a\x0a"  # RFC 7541 C.1.2
    fields: Any = Decoder().decode(w.literal(b"x-name", b"v" * 300), raw=True)
    assert fields == [(b"x-name", b"v" * 300)]


async def test_keepalive_unanswered_closes() -> None:
    server = Http2GrpcServer(
        echo_methods(Recorder()),
        GrpcChannel(
            keepalive_time_ms=50, keepalive_timeout_ms=100, keepalive_permit_without_calls=True
        ),
    )
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = RawClient(reader, writer)
    client.send(w.PREFACE, w.frame(w.SETTINGS, 0, 0))
    ping = await client.until(w.PING)
    assert ping[1] == 0  # a server PING, which this client never answers
    assert await client.closed()
    writer.close()
    await server.stop(0)


async def test_a_client_that_pings_too_often_is_told_to_calm_down(client: RawClient) -> None:
    for _ in range(3):  # no call open: one PING per two hours is allowed, two strikes forgiven
        client.send(w.frame(w.PING, 0, 0, b"pingpong"))
        assert await client.until(w.PING) == (w.PING, w.ACK, 0, b"pingpong")
    client.send(w.frame(w.PING, 0, 0, b"pingpong"))
    _, _, _, payload = await client.until(w.GOAWAY)
    assert w.GOAWAY_HEAD.unpack_from(payload)[1] == w.ErrorCode.ENHANCE_YOUR_CALM
    assert payload[w.GOAWAY_HEAD.size :] == b"too_many_pings"
    assert await client.closed()


async def test_pings_between_answers_are_no_strikes(client: RawClient) -> None:
    for sid in (1, 3, 5, 7, 9):  # each answer (headers, data) forgives the pings before it
        client.send(
            w.frame(w.PING, 0, 0, b"pingpong"),
            client.headers(sid, request_headers()),
            w.frame(w.DATA, w.END_STREAM, sid, message(b"hi")),
        )
        _, body = await client.response(sid)
        assert body == message(b"hi")


async def test_server_keepalive_pings_only_with_a_call_and_at_most_two_without_data() -> None:
    recorder = Recorder()
    server = Http2GrpcServer(
        echo_methods(recorder), GrpcChannel(keepalive_time_ms=20, keepalive_timeout_ms=5000)
    )
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = RawClient(reader, writer)
    client.send(w.PREFACE, w.frame(w.SETTINGS, 0, 0))

    async def server_pings(seconds: float) -> int:
        frames = await client.frames_for(seconds)  # within the keepalive timeout: no ACK owed
        return sum(ftype == w.PING and not flags & w.ACK for ftype, flags, _, _ in frames)

    assert await server_pings(0.2) == 0  # no call open: no keepalive (permit_without_calls)
    client.send(client.headers(1, request_headers(BIDI)), w.frame(w.DATA, 0, 1, message(b"hold")))
    assert await server_pings(0.3) == 2  # a call, but nothing sent on it: two PINGs, no more
    recorder.release.set()
    client.send(w.frame(w.DATA, w.END_STREAM, 1, message(b"x")))
    writer.close()
    await server.stop(0)
