"""Http2GrpcServer against real grpcio clients (aio and sync channels), on the test's loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import pytest

from inferd.server.grpc_transport import GrpcBindError, Http2GrpcServer
from inferd.server.settings import GrpcChannel
from tests.grpc_echo import BIDI, ERROR_DETAILS, NOW, STREAM, UNARY, Recorder, echo_methods

MiB = 1 << 20
Options = Sequence[tuple[str, Any]]


class Harness:
    def __init__(self, server: Http2GrpcServer, port: int, recorder: Recorder) -> None:
        self.server = server
        self.port = port
        self.recorder = recorder
        self.target = f"127.0.0.1:{port}"
        self._channels: list[grpc.aio.Channel] = []

    def channel(self, options: Options = ()) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(self.target, options=list(options))
        self._channels.append(channel)
        return channel

    def unary(self, channel: grpc.aio.Channel, path: str = UNARY) -> Any:
        return channel.unary_unary(path)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., Any]]:
    harnesses: list[Harness] = []

    async def make(**channel_fields: Any) -> Harness:
        recorder = Recorder()
        server = Http2GrpcServer(echo_methods(recorder), GrpcChannel(**channel_fields))
        port = await server.start("127.0.0.1", 0)
        harness = Harness(server, port, recorder)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        await harness.close()
        await harness.server.stop(0)


@pytest.fixture
async def echo(make_server: Callable[..., Any]) -> Harness:
    harness: Harness = await make_server()
    return harness


async def test_unary_round_trip(echo: Harness) -> None:
    call = echo.unary(echo.channel())
    assert await call(b"hello") == b"hello"
    assert await call(b"") == b""  # an empty message is still a message


def test_sync_channel_from_another_thread() -> None:
    # A plain grpcio channel in this thread; the server runs on its own loop in another.
    async def main() -> None:
        server = Http2GrpcServer(echo_methods(Recorder()), GrpcChannel())
        port = await server.start("127.0.0.1", 0)

        def client() -> bytes:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                result: bytes = channel.unary_unary(UNARY)(b"sync", timeout=5)
                return result

        try:
            assert await asyncio.to_thread(client) == b"sync"
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_on_uvloop() -> None:
    # Production runs on uvloop, whose transports differ from asyncio's (writelines, types).
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        server = Http2GrpcServer(echo_methods(Recorder()), GrpcChannel())
        port = await server.start("127.0.0.1", 0)
        options = [("grpc.http2.bdp_probe", 0)]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                assert await channel.unary_unary(UNARY)(b"uv") == b"uv"
                assert await channel.unary_unary(UNARY)(b"big:%d" % MiB) == b"x" * MiB
        finally:
            await server.stop(0)

    uvloop.run(main())


async def test_unary_stream(echo: Harness) -> None:
    call = echo.channel().unary_stream(STREAM)
    assert [message async for message in call(b"3")] == [b"0:", b"1:", b"2:"]


async def test_stream_error_after_no_message_is_trailers_only(echo: Harness) -> None:
    call = echo.channel().unary_stream(STREAM)(b"0")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in call:
            pass
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == "nothing"


async def test_bidi_interleaved(echo: Harness) -> None:
    call = echo.channel().stream_stream(BIDI)()
    for word in (b"a", b"bb", b"ccc"):
        await call.write(word)
        assert await call.read() == b"echo:" + word  # each answer before the next request
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_concurrent_calls_on_one_channel(echo: Harness) -> None:
    call = echo.unary(echo.channel())
    payloads = [b"call-%d" % index * (index + 1) for index in range(8)]
    assert await asyncio.gather(*(call(payload) for payload in payloads)) == payloads


@pytest.mark.parametrize("options", [(), (("grpc.http2.bdp_probe", 0),)], ids=["bdp", "no-bdp"])
async def test_large_request_and_response(echo: Harness, options: Options) -> None:
    # Without BDP probing the client keeps a 64 KiB window: the 3 MiB answer must wait for
    # WINDOW_UPDATEs (outbound flow control queues and resumes).
    channel = echo.channel(options)
    request = bytes(range(256)) * (3 * MiB // 256)
    assert await echo.unary(channel)(request) == request
    assert await echo.unary(channel)(b"big:%d" % (3 * MiB)) == b"x" * (3 * MiB)
    stream = channel.unary_stream(STREAM)(b"4x%d" % MiB)  # streaming writes wait on the window
    sizes = [len(message) async for message in stream]
    assert sizes == [MiB + 2] * 4


async def test_rpc_error_code_and_unicode_details(echo: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await echo.unary(echo.channel())(b"error")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == ERROR_DETAILS


async def test_handler_exception_is_internal_and_connection_survives(echo: Harness) -> None:
    channel = echo.channel()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await echo.unary(channel)(b"crash")
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert error.value.details().startswith("internal error: ZeroDivisionError")
    assert await echo.unary(channel)(b"after") == b"after"


async def test_unknown_method(echo: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await echo.unary(echo.channel(), "/test.Echo/Nope")(b"x")
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.value.details() == "Method not found!"


async def test_unparsable_request(echo: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await echo.unary(echo.channel())(b"unparsable")
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert error.value.details() == "Exception deserializing request!"


async def test_deadline_cancels_handler(echo: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await echo.unary(echo.channel())(b"sleep:30", timeout=0.2)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(echo.recorder.cancelled.wait(), 2)


async def test_client_cancel_cancels_handler(echo: Harness) -> None:
    call = echo.channel().stream_stream(BIDI)()
    await call.write(b"sleep:30")
    await asyncio.wait_for(echo.recorder.started.wait(), 2)
    call.cancel()
    await asyncio.wait_for(echo.recorder.cancelled.wait(), 2)
    assert not echo.recorder.finished.is_set()


async def test_answer_now_methods_answer_from_a_callback(echo: Harness) -> None:
    now = echo.unary(echo.channel(), NOW)
    assert await now(b"at once") == b"at once"
    assert await now(b"later:0.05") == b"done:later:0.05"  # from a timer: no task held it
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await now(b"error")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == ERROR_DETAILS


async def test_deadline_cancels_the_pending_answer(echo: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await echo.unary(echo.channel(), NOW)(b"later:30", timeout=0.2)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(echo.recorder.cancelled.wait(), 2)
    assert not echo.recorder.finished.is_set()


async def test_gzip_request(echo: Harness) -> None:
    channel = echo.channel()
    request = b"squeeze me " * 10_000
    assert await echo.unary(channel)(request, compression=grpc.Compression.Gzip) == request
    deflated = await echo.unary(channel)(request, compression=grpc.Compression.Deflate)
    assert deflated == request


async def test_oversize_messages(make_server: Callable[..., Any]) -> None:
    harness: Harness = await make_server(max_message_size=1000)
    call = harness.unary(harness.channel())
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(b"z" * 2000)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.details() == "Received message larger than max (2000 vs. 1000)"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(b"big:5000")
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as error:  # small on the wire, big inflated
        await call(b"z" * 5000, compression=grpc.Compression.Gzip)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await call(b"fits") == b"fits"


async def test_stop_lets_inflight_call_finish_and_refuses_new(echo: Harness) -> None:
    channel = echo.channel()
    inflight = asyncio.ensure_future(echo.unary(channel)(b"sleep:0.3"))
    await asyncio.wait_for(echo.recorder.started.wait(), 2)
    await echo.server.stop(5)
    assert await inflight == b"sleep:0.3"
    assert echo.recorder.finished.is_set()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await echo.unary(echo.channel())(b"late", timeout=2)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_cancels_calls_past_grace(echo: Harness) -> None:
    inflight = asyncio.ensure_future(echo.unary(echo.channel())(b"sleep:30"))
    await asyncio.wait_for(echo.recorder.started.wait(), 2)
    await echo.server.stop(0.1)
    assert echo.recorder.cancelled.is_set()
    with pytest.raises(grpc.aio.AioRpcError):
        await inflight


async def test_garbage_preface_then_server_still_serves(echo: Harness) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 2) is not None  # EOF: closed by the server
    assert reader.at_eof()
    writer.close()
    assert await echo.unary(echo.channel())(b"still here") == b"still here"


async def test_port_taken_fails(echo: Harness) -> None:
    other = Http2GrpcServer(echo_methods(Recorder()), GrpcChannel())
    with pytest.raises(GrpcBindError, match=f"cannot bind gRPC to 127.0.0.1:{echo.port}: "):
        await other.start("127.0.0.1", echo.port)
    with socket.create_connection(("127.0.0.1", echo.port)):
        pass  # the first server still listens


async def test_max_concurrent_streams_refuses_extra(make_server: Callable[..., Any]) -> None:
    harness: Harness = await make_server(max_concurrent_streams=2)
    call = harness.unary(harness.channel())
    # grpcio honours the advertised limit by queueing: all calls still succeed, two at a time.
    results = await asyncio.gather(*(call(b"sleep:0.05") for _ in range(5)))
    assert results == [b"sleep:0.05"] * 5


async def test_max_connection_age_goaway(make_server: Callable[..., Any]) -> None:
    harness: Harness = await make_server(
        max_connection_age_ms=200, max_connection_age_grace_ms=2000
    )
    channel = harness.channel()
    call = harness.unary(channel)
    assert await call(b"sleep:0.4") == b"sleep:0.4"  # outlives the age: finishes within grace
    assert await call(b"reconnected") == b"reconnected"


async def test_keepalive_ping_answered(make_server: Callable[..., Any]) -> None:
    harness: Harness = await make_server(keepalive_time_ms=50, keepalive_timeout_ms=1000)
    channel = harness.channel()
    assert await harness.unary(channel)(b"sleep:0.3") == b"sleep:0.3"  # pings come and get ACKed
    assert len(harness.server.connections) == 1
