"""Connection-level behaviour of inferd's HTTP/1.1 server, driven over a raw socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.types import Receive, Scope, Send

from inferd.server.http1 import FastHandler, Http1Options, Http1Server, HttpRequest, Reply

LIMIT = 1000

Response = tuple[int, dict[bytes, bytes], bytes]


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI: answers with what it was asked, as JSON."""
    message = await receive()
    body = orjson.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "body": message["body"].decode(),
        }
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GatedRoute:
    """A fast route for POST /fast whose answers wait until the test releases them."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[bytes]] = []

    def __call__(self, method: str, path: str) -> FastHandler | None:
        return self.handle if (method, path) == ("POST", "/fast") else None

    def handle(self, request: HttpRequest, reply: Reply) -> asyncio.Future[Any]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def answer(done: asyncio.Future[bytes]) -> None:
            if not done.cancelled():
                reply(200, (), b"fast:" + done.result())

        future.add_done_callback(answer)
        if request.body == b"wait":
            self.futures.append(future)
        else:
            future.set_result(request.body)
        return future


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> Response:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 2)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower().encode()] = value.strip().encode()
        length = int(headers.get(b"content-length", b"0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 2) if length else b""
        return int(status_line.split()[1]), headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 2) == b""


@pytest.fixture
async def served() -> AsyncIterator[tuple[Http1Server, GatedRoute, int]]:
    route = GatedRoute()
    server = Http1Server(
        echo_app, Http1Options(max_body_size=LIMIT, keep_alive_timeout_s=0.3), route
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    await server.start(sock)
    yield server, route, sock.getsockname()[1]
    await server.stop(1.0)


@pytest.fixture
async def client(served: tuple[Http1Server, GatedRoute, int]) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", served[2])
    yield Client(reader, writer)
    writer.close()


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: t", *extra]) + "\r\n\r\n").encode()


async def test_asgi_route_sees_method_decoded_path_query_and_body(client: Client) -> None:
    client.send(post("/v2/models/a%20b/load?x=1", b"hello"))
    status, headers, body = await client.response()
    assert status == 200 and headers[b"content-type"] == b"application/json"
    assert orjson.loads(body) == {
        "method": "POST",
        "path": "/v2/models/a b/load",
        "query": "x=1",
        "body": "hello",
    }


async def test_fast_route_answers_with_content_length(client: Client) -> None:
    client.send(post("/fast", b"x"))
    assert await client.response() == (200, {b"content-length": b"6"}, b"fast:x")


async def test_pipelined_requests_are_answered_in_order(
    served: tuple[Http1Server, GatedRoute, int], client: Client
) -> None:
    route = served[1]
    client.send(post("/fast", b"wait") + get("/after") + post("/fast", b"2"))
    while not route.futures:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the later requests are ready but must not overtake the first
    route.futures[0].set_result(b"1")
    bodies = [(await client.response())[2] for _ in range(3)]
    assert bodies[0] == b"fast:1"
    assert orjson.loads(bodies[1])["path"] == "/after"
    assert bodies[2] == b"fast:2"


async def test_expect_100_continue_is_answered_before_the_body(client: Client) -> None:
    client.send(post("/echo", b"", "Expect: 100-continue").replace(b"Length: 0", b"Length: 4"))
    interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 2)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(b"data")
    status, _, body = await client.response()
    assert status == 200 and orjson.loads(body)["body"] == "data"


async def test_declared_body_over_the_limit_is_413_and_closes(client: Client) -> None:
    client.send(post("/echo", b"x" * (LIMIT + 1)))
    status, headers, body = await client.response()
    assert status == 413 and headers[b"connection"] == b"close"
    assert orjson.loads(body) == {
        "error": f"request body is larger than the limit of {LIMIT} bytes"
    }
    assert await client.closed()


async def test_chunked_body_over_the_limit_is_413(client: Client) -> None:
    chunk = b"%x\r\n%s\r\n" % (600, b"y" * 600)
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2)
    status, _, body = await client.response()
    assert status == 413 and b"limit" in body
    assert await client.closed()


async def test_chunked_body_within_the_limit_is_joined(client: Client) -> None:
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    status, _, body = await client.response()
    assert status == 200 and orjson.loads(body)["body"] == "abcde"


async def test_malformed_request_is_a_json_400_then_close(client: Client) -> None:
    client.send(b"NOT HTTP AT ALL\r\n\r\n")
    status, _, body = await client.response()
    assert status == 400 and orjson.loads(body)["error"].startswith("malformed HTTP request")
    assert await client.closed()


async def test_connection_close_and_http_1_0_close_after_the_answer(
    served: tuple[Http1Server, GatedRoute, int],
) -> None:
    for request in (get("/x", "Connection: close"), b"GET /x HTTP/1.0\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", served[2])
        client = Client(reader, writer)
        client.send(request)
        status, headers, _ = await client.response()
        assert status == 200 and headers[b"connection"] == b"close"
        assert await client.closed()
        writer.close()


async def test_http_1_0_keep_alive_is_confirmed(client: Client) -> None:
    client.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = await client.response()
    assert status == 200 and headers[b"connection"] == b"keep-alive"
    client.send(get("/b"))  # the connection is still open
    assert orjson.loads((await client.response())[2])["path"] == "/b"


async def test_head_answer_has_no_body(client: Client) -> None:
    client.send(get("/x").replace(b"GET", b"HEAD") + get("/next"))
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: " in head
    _, _, body = await client.response()  # the next answer follows at once: no stray body
    assert orjson.loads(body)["path"] == "/next"


async def test_idle_connection_is_closed_after_the_keep_alive_timeout(client: Client) -> None:
    client.send(get("/x"))
    await client.response()
    assert await asyncio.wait_for(client.reader.read(1), 1.5) == b""


async def test_disconnect_cancels_the_pending_fast_request(
    served: tuple[Http1Server, GatedRoute, int], client: Client
) -> None:
    route = served[1]
    client.send(post("/fast", b"wait"))
    while not route.futures:
        await asyncio.sleep(0.01)
    client.writer.close()
    await asyncio.sleep(0.1)
    assert route.futures[0].cancelled()


async def test_stop_answers_what_was_accepted_then_closes(
    served: tuple[Http1Server, GatedRoute, int], client: Client
) -> None:
    server, route, port = served
    client.send(post("/fast", b"wait"))
    while not route.futures:
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(server.stop(2.0))
    await asyncio.sleep(0.05)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    route.futures[0].set_result(b"late")
    status, headers, body = await client.response()
    assert (status, body, headers[b"connection"]) == (200, b"fast:late", b"close")
    await stopping


def test_infer_routes_are_parsed_once_per_path_and_the_cache_stays_bounded() -> None:
    from functools import partial
    from types import SimpleNamespace
    from typing import cast

    from inferd.server.core import InferenceCore
    from inferd.server.http_app import MAX_FAST_ROUTES, HttpFrontDoor, HttpSettings

    # Routing asks the core one thing: which version names (MLServer's) a model has.
    core = SimpleNamespace(names_version=lambda model, version: (model, version) == ("m", "v1"))
    door = HttpFrontDoor(cast(InferenceCore, core), HttpSettings())
    first = door.fast_route("POST", "/v2/models/m/versions/2/infer")
    assert isinstance(first, partial) and first.args == ("m", "2")
    assert door.fast_route("POST", "/v2/models/m/versions/2/infer") is first
    assert door.fast_route("GET", "/v2/models/m/infer") is None
    assert door.fast_route("POST", "/v2/models/m/versions/x/infer") is None  # Triton's 404
    named = door.fast_route("POST", "/v2/models/m/versions/v1/infer")
    assert isinstance(named, partial) and named.args == ("m", "v1")
    assert door.fast_route("POST", "/v2/models/m/ready") is None
    for index in range(2 * MAX_FAST_ROUTES):  # clients choose paths: the cache must not grow
        assert door.fast_route("POST", f"/v2/models/m{index}/infer") is not None
    assert len(door._fast_routes) <= MAX_FAST_ROUTES
