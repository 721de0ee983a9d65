"""Triton's Redis response cache (`--cache-config redis,host=H --cache-config redis,port=P`):
one cache that every replica of a deployment shares, and that outlives a replica scaled to
zero.

Entries are Redis hashes laid out as Triton's redis_cache writes them (field `0:b` holds the
entry, `0:s` its size, `0:t`/`0:i` its memory type and id: CPU, 0), under the key `inferd:`
and the request's hash in hex. Eviction is Redis's (its maxmemory policy), as in Triton.

A cache is a shortcut, never a dependency: a Redis that fails or times out makes lookups misses
and inserts skipped, so requests run their models; after a failure Redis is left alone for
RETRY_AFTER_S, so that an outage does not add a timeout to every request. Inserts run after
the answer has gone; beyond MAX_PENDING_TASKS of them (and lookups) under way, they are skipped.
Lookups that arrive while others are under way go together, one pipeline per connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from redis.asyncio import BlockingConnectionPool, Redis, SSLConnection
from redis.exceptions import RedisError

from inferd.server.cache_config import RedisCacheConfig
from inferd.server.cache_entry import decode_entry, encode_entry
from inferd.server.response_cache import LookupCounters

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
KEY_PREFIX = "inferd:"
RETRY_AFTER_S = 1.0
MAX_PENDING_TASKS = 64
# Triton's fields for buffer 0: the entry, its size, memory type (0: CPU) and memory type id.
ENTRY, SIZE, MEMORY_TYPE, MEMORY_TYPE_ID = "0:b", "0:s", "0:t", "0:i"


class RedisCacheError(Exception):
    """Redis could not be reached at start-up (the server does not start, as in Triton)."""


class _SniConnection(SSLConnection):
    """TLS with a server name of its own (`sni`) rather than the host's."""

    def __init__(self, *, server_hostname: str, **kwargs: Any) -> None:
        self._server_hostname = server_hostname
        super().__init__(**kwargs)

    def _connection_arguments(self) -> Any:
        return {**super()._connection_arguments(), "server_hostname": self._server_hostname}


def connection_pool(config: RedisCacheConfig) -> BlockingConnectionPool:
    """The pool Triton's settings describe. TLS as hiredis checks it: the server's chain
    against `cacert`/`cacert_dir` (else the system's roots), not its host name."""
    kwargs: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "db": config.db,
        "username": config.user or None,
        "password": config.password or None,
        "socket_connect_timeout": _seconds(config.connect_timeout_ms),
        "socket_timeout": _seconds(config.socket_timeout_ms),
        "max_connections": config.pool_size,
        "timeout": _seconds(config.wait_timeout_ms),
    }
    tls = config.tls
    if tls is not None:
        kwargs |= {
            "connection_class": SSLConnection,
            "ssl_certfile": tls.cert or None,
            "ssl_keyfile": tls.key or None,
            "ssl_ca_certs": tls.cacert or None,
            "ssl_ca_path": tls.cacert_dir or None,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": False,
        }
        if tls.sni:
            kwargs |= {"connection_class": _SniConnection, "server_hostname": tls.sni}
    return BlockingConnectionPool(**kwargs)


class RedisCache(LookupCounters):
    """Used on the event loop only."""

    def __init__(self, config: RedisCacheConfig) -> None:
        super().__init__()
        self.config = config
        self._redis = Redis(connection_pool=connection_pool(config))
        self._retry_at = 0.0  # monotonic seconds; Redis is left alone until then
        self._tasks: set[asyncio.Task[None]] = set()  # inserts and lookups under way
        self._waiting: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._flush_due = False
        self._fetching = 0  # pipelines under way, at most pool_size

    async def connect(self) -> None:
        """Ping Redis once, as Triton does at start-up. Raises RedisCacheError."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            await self.close()
            raise RedisCacheError(f"Failed to initialize RedisCache: {_reason(exc)}") from None

    async def get(self, key: bytes) -> Outputs | None:
        """The entry under `key`; None for a miss, and while Redis fails. The lookups that
        arrive while others are under way go together, in one pipeline (one round trip)."""
        if not self._reachable():
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        self._waiting.append((KEY_PREFIX + key.hex(), waiter))
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)  # after this turn's other lookups
        entry = await waiter
        if entry is None:
            return None
        try:
            return decode_entry(entry)
        except ValueError as exc:  # not an entry: a miss, which the next insert replaces
            log.debug("response cache: entry %s unreadable: %s", key.hex(), exc)
            return None

    def _flush(self) -> None:
        self._flush_due = False
        if not self._waiting or self._fetching >= self.config.pool_size:
            return  # a pipeline under way flushes these when it ends
        batch, self._waiting = self._waiting, []
        self._fetching += 1
        task = asyncio.get_running_loop().create_task(self._fetch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, batch: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        entries: list[object] = [None] * len(batch)
        try:
            pipeline = self._redis.pipeline(transaction=False)
            for name, _ in batch:
                pipeline.hget(name, ENTRY)
            # A key that holds something else answers its own error: a miss for that one.
            entries = await pipeline.execute(raise_on_error=False)
            self._recovered()
        except (RedisError, OSError) as exc:
            self._failed("looking up entries", exc)
        finally:
            self._fetching -= 1
            for (_, waiter), entry in zip(batch, entries, strict=True):
                if not waiter.done():  # its requester may have left
                    waiter.set_result(entry if isinstance(entry, bytes) else None)
        self._flush()

    def put(self, key: bytes, outputs: Outputs, stored: Callable[[int], None]) -> None:
        """Store `outputs` in the background; `stored` gets the insertion's nanoseconds (0 when
        it was skipped or failed) once it ends."""
        if not self._reachable() or len(self._tasks) >= MAX_PENDING_TASKS:
            stored(0)
            return
        task = asyncio.get_running_loop().create_task(self._insert(key, outputs, stored))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _insert(self, key: bytes, outputs: Outputs, stored: Callable[[int], None]) -> None:
        start = time.monotonic_ns()
        entry = encode_entry(outputs)
        fields = {ENTRY: entry, SIZE: str(len(entry)), MEMORY_TYPE: "0", MEMORY_TYPE_ID: "0"}
        try:
            await self._redis.hset(KEY_PREFIX + key.hex(), mapping=fields)  # type: ignore[arg-type]
        except (RedisError, OSError) as exc:
            self._failed("inserting an entry", exc)
            stored(0)
            return
        self._recovered()
        took = time.monotonic_ns() - start
        self.insertion_ns += took
        stored(took)

    async def close(self) -> None:
        """Let the lookups and inserts under way end (the socket timeout bounds them), then
        close the connections."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose(close_connection_pool=True)

    def _reachable(self) -> bool:
        return not self._retry_at or time.monotonic() >= self._retry_at

    def _failed(self, doing: str, exc: BaseException) -> None:
        if not self._retry_at:  # once per outage, not once per request
            log.error(
                "response cache: Redis at %s:%d failed %s (%s); requests run their models, "
                "and Redis is tried again every %.0f s",
                self.config.host,
                self.config.port,
                doing,
                _reason(exc),
                RETRY_AFTER_S,
            )
        self._retry_at = time.monotonic() + RETRY_AFTER_S

    def _recovered(self) -> None:
        if self._retry_at:
            self._retry_at = 0.0
            log.warning("response cache: Redis answers again")


def _seconds(ms: int) -> float | None:
    return ms / 1000 if ms else None  # Triton's 0: wait forever


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
