"""The response cache's Redis client against a real Redis server: pipelined replies in order,
Redis's errors per command, and connections that break, hang or refuse."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import numpy as np
import pytest

from inferd.server.redis_cache import RedisCache
from inferd.server.redis_client import RedisClient, RedisReplyError, _parse
from tests.redis_server import RedisServer


def test_replies_parse_whole_or_wait_for_the_rest() -> None:
    assert _parse(bytearray(b"+OK\r\n"), 0) == (b"OK", 5)
    assert _parse(bytearray(b":42\r\n"), 0) == (42, 5)
    assert _parse(bytearray(b"$-1\r\n"), 0) == (None, 5)  # nil
    assert _parse(bytearray(b"xx$3\r\nabc\r\n"), 2) == (b"abc", 11)
    assert _parse(bytearray(b"$0\r\n\r\n"), 0) == (b"", 6)
    for partial in (b"", b"+OK", b"$3\r\nab", b"$3\r\nabc\r"):
        assert _parse(bytearray(partial), 0) is None
    parsed = _parse(bytearray(b"-WRONGTYPE Operation\r\n"), 0)
    assert parsed is not None
    assert isinstance(parsed[0], RedisReplyError) and str(parsed[0]) == "WRONGTYPE Operation"
    with pytest.raises(ValueError):
        _parse(bytearray(b"?what\r\n"), 0)


def test_pipelined_commands_get_their_own_replies(redis_server: RedisServer) -> None:
    async def run() -> None:
        client = RedisClient(redis_server.config(pool_size=2))
        try:
            keys = [f"test:{i}" for i in range(200)]
            await asyncio.gather(*(client.send("SET", key, key * 3) for key in keys))
            # All in flight at once, over two connections: each gets its own value.
            values = await asyncio.gather(*(client.send("GET", key) for key in keys))
            assert values == [key.encode() * 3 for key in keys]
            assert await client.send("GET", "test:missing") is None
            assert await client.send("HSET", "test:h", "f", b"\x00\r\n\xff") == 1
            assert await client.send("HGET", "test:h", "f") == b"\x00\r\n\xff"
            with pytest.raises(RedisReplyError, match=r"^WRONGTYPE"):
                await client.send("HGET", "test:0", "f")
            assert await client.send("PING") == b"PONG"  # the error took only its command
        finally:
            await client.close()

    asyncio.run(run())


def test_a_broken_connection_fails_what_is_in_flight_and_reopens(
    redis_server: RedisServer,
) -> None:
    async def run() -> None:
        client = RedisClient(redis_server.config())
        try:
            assert await client.send("PING") == b"PONG"
            blocked = client.send("BLPOP", "test:never", "0")  # waits in Redis for ever
            await asyncio.sleep(0.1)
            redis_server.client().client_kill_filter(_type="normal", skipme=True)
            with pytest.raises(ConnectionError):
                await blocked
            assert await client.send("PING") == b"PONG"  # a new connection, logged in again
        finally:
            await client.close()

    asyncio.run(run())


def test_a_redis_that_does_not_answer_times_out_and_is_then_left_alone(
    redis_server: RedisServer,
) -> None:
    async def run() -> None:
        with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
            config = redis_server.config(port=silent.getsockname()[1], socket_timeout_ms=200)
            client = RedisClient(config)
            with pytest.raises(TimeoutError, match="did not answer within 200 ms"):
                await asyncio.wait_for(client.send("PING"), 30)
            await client.close()
            cache = RedisCache(config)
            assert await asyncio.wait_for(cache.get(b"k" * 16), 30) is None  # a miss
            # Redis is left alone for a while: the next lookup does not wait again.
            assert cache.get(b"k" * 16).done()
            stored: list[int] = []
            cache.put(b"k" * 16, {"Y": np.zeros(1, np.float32)}, stored.append)
            assert stored == [0]  # skipped at once
            await cache.close()

    asyncio.run(run())


def test_a_wrong_password_or_database_is_redis_s_answer(redis_server: RedisServer) -> None:
    async def run() -> None:
        for config, words in (
            (redis_server.config(password="wrong"), "WRONGPASS"),
            (redis_server.config(password=""), "NOAUTH"),
            (redis_server.config(db=99), "DB index is out of range"),
        ):
            client = RedisClient(config)
            with pytest.raises(RedisReplyError, match=words):
                await client.send("PING")
            await client.close()
        client = RedisClient(replace(redis_server.config(), db=3))
        await client.send("SET", "test:db", "3")
        assert redis_server.client().get("test:db") is None  # not in database 0
        await client.close()

    asyncio.run(run())
