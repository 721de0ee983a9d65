"""Triton's Redis response cache (`--cache-config redis,host=H --cache-config redis,port=P`):
one cache that every replica of a deployment shares, and that outlives a replica scaled to
zero.

Entries are Redis hashes laid out as Triton's redis_cache writes them (field `0:b` holds the
entry, `0:s` its size, `0:t`/`0:i` its memory type and id: CPU, 0), under the key `inferd:`
and the request's hash in hex. Eviction is Redis's (its maxmemory policy), as in Triton.

A cache is a shortcut, never a dependency: a Redis that fails or times out makes lookups misses
and inserts skipped, so requests run their models; after a failure Redis is left alone for
RETRY_AFTER_S, so that an outage does not add a timeout to every request. Inserts run after
the answer has gone, at most MAX_PENDING_INSERTS at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from inferd.server.cache_config import RedisCacheConfig
from inferd.server.cache_entry import decode_entry, encode_entry
from inferd.server.redis_client import RedisClient, RedisReplyError, Reply
from inferd.server.response_cache import LookupCounters, ResponseCache

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
KEY_PREFIX = "inferd:"
RETRY_AFTER_S = 1.0
MAX_PENDING_INSERTS = 64
# Triton's fields for buffer 0: the entry, its size, memory type (0: CPU) and memory type id.
ENTRY, SIZE, MEMORY_TYPE, MEMORY_TYPE_ID = "0:b", "0:s", "0:t", "0:i"


class RedisCacheError(Exception):
    """Redis could not be reached at start-up (the server does not start, as in Triton)."""


class RedisCache(LookupCounters):
    """Used on the event loop only."""

    def __init__(self, config: RedisCacheConfig) -> None:
        super().__init__()
        self.config = config
        self._redis = RedisClient(config)
        # A near cache: hot answers from this server's memory, Redis for the rest.
        self._near = ResponseCache(config.near_size) if config.near_size else None
        self._retry_at = 0.0  # monotonic seconds; Redis is left alone until then
        self._inserts: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        """Ping Redis once, as Triton does at start-up. Raises RedisCacheError."""
        try:
            await self._redis.send("PING")
        except (OSError, RedisReplyError) as exc:
            await self.close()
            raise RedisCacheError(f"Failed to initialize RedisCache: {self._reason(exc)}") from None

    def get(self, key: bytes) -> asyncio.Future[Outputs | None]:
        """The entry under `key`, to come; None for a miss, and while Redis fails."""
        found: asyncio.Future[Outputs | None] = asyncio.get_running_loop().create_future()
        near = self._near.get(key) if self._near is not None else None
        if near is not None or not self._reachable():
            found.set_result(near)
            return found
        reply = self._redis.send("HGET", KEY_PREFIX + key.hex(), ENTRY)
        reply.add_done_callback(partial(self._got, key, found))
        return found

    def _got(
        self, key: bytes, found: asyncio.Future[Outputs | None], reply: asyncio.Future[Reply]
    ) -> None:
        if found.done():
            return  # its requester left
        entry = None
        if not reply.cancelled():
            error = reply.exception()
            if error is None:
                self._recovered()
                entry = reply.result()
            elif not _wrong_type(error):  # a key that holds something else is a miss
                self._failed("looking up an entry", error)
        outputs = self._decoded(key, entry) if isinstance(entry, bytes) else None
        if outputs is not None and self._near is not None:
            self._near.put(key, outputs)
        found.set_result(outputs)

    @staticmethod
    def _decoded(key: bytes, entry: bytes) -> Outputs | None:
        try:
            return decode_entry(entry)
        except ValueError as exc:  # not an entry: a miss, which the next insert replaces
            log.debug("response cache: entry %s unreadable: %s", key.hex(), exc)
            return None

    def put(self, key: bytes, outputs: Outputs, stored: Callable[[int], None]) -> None:
        """Store `outputs` in the background; `stored` gets the insertion's nanoseconds (0 when
        it was skipped or failed) once it ends."""
        if self._near is not None:
            self._near.put(key, outputs)
        if not self._reachable() or len(self._inserts) >= MAX_PENDING_INSERTS:
            stored(0)
            return
        task = asyncio.get_running_loop().create_task(self._insert(key, outputs, stored))
        self._inserts.add(task)
        task.add_done_callback(self._inserts.discard)

    async def _insert(self, key: bytes, outputs: Outputs, stored: Callable[[int], None]) -> None:
        start = time.monotonic_ns()
        entry = encode_entry(outputs)
        fields = (ENTRY, entry, SIZE, str(len(entry)), MEMORY_TYPE, "0", MEMORY_TYPE_ID, "0")
        try:
            await self._redis.send("HSET", KEY_PREFIX + key.hex(), *fields)
        except (OSError, RedisReplyError) as exc:
            if not _wrong_type(exc):
                self._failed("inserting an entry", exc)
            stored(0)
            return
        self._recovered()
        took = time.monotonic_ns() - start
        self.insertion_ns += took
        stored(took)

    async def close(self) -> None:
        """Let the inserts under way end (the socket timeout bounds them), then close the
        connections."""
        if self._inserts:
            await asyncio.gather(*self._inserts, return_exceptions=True)
        await self._redis.close()

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
                self._reason(exc),
                RETRY_AFTER_S,
            )
        self._retry_at = time.monotonic() + RETRY_AFTER_S

    def _reason(self, exc: BaseException) -> str:
        where = f"{self.config.host}:{self.config.port}"
        if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the system's
            why = getattr(exc, "verify_message", "") or exc.reason or str(exc)
            return f"failed to connect to Redis ({where}): TLS: {why}"
        if isinstance(exc, OSError) and exc.errno:  # Triton's words for a refused connection
            return f"failed to connect to Redis ({where}): {os.strerror(exc.errno)}"
        return str(exc) or type(exc).__name__

    def _recovered(self) -> None:
        if self._retry_at:
            self._retry_at = 0.0
            log.warning("response cache: Redis answers again")


def _wrong_type(error: BaseException) -> bool:
    """Redis's answer for a key that holds something else than a hash: that key's problem,
    not Redis's."""
    return isinstance(error, RedisReplyError) and str(error).startswith("WRONGTYPE")
