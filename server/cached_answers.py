"""Requests to models with `response_cache { enable: true }`: answered from the server's cache
when it holds their answer, else run, with the answer stored once it succeeds.

Triton's accounting: a hit counts as a successful request that queued for its lookup, without
inference or execution counts; a miss counts once its request ends, with its lookup and
insertion time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial

from inferd.batching.scheduler import OnDone, Outputs, resolve
from inferd.batching.stats import ModelStats
from inferd.repository.manager import ModelVersion
from inferd.server.answers import holds_answer
from inferd.server.redis_cache import RedisCache
from inferd.server.response_cache import ResponseCache, request_key
from inferd.server.types import InferRequest

Submit = Callable[[OnDone | None], asyncio.Future[Outputs]]


class CachedAnswers:
    """On the event loop. The local cache answers in the caller's turn; Redis is asked in a
    task, and the request is submitted once it has said no."""

    def __init__(self, cache: ResponseCache | RedisCache) -> None:
        self.cache = cache

    def submit(
        self,
        request: InferRequest,
        model: ModelVersion,
        stats: ModelStats,
        submit: Submit,
        on_done: OnDone | None,
    ) -> asyncio.Future[Outputs]:
        # The model's id, not the request's name: with --model-namespacing, ensembles in two
        # repositories run two models of one name.
        key = request_key(str(model.id), model.version, request.inputs, request.parameters)
        if isinstance(self.cache, RedisCache):
            return _RedisLookup(self.cache, key, request, model, stats, submit, on_done).answer
        start = time.monotonic_ns()
        outputs = self.cache.get(key)
        if outputs is not None and not holds_answer(outputs, request, model):
            outputs = None
        lookup_ns = time.monotonic_ns() - start
        self.cache.record_lookup(outputs is not None, lookup_ns)
        if outputs is None:
            future = submit(on_done)
            future.add_done_callback(partial(self._store, key, stats, lookup_ns))
            return future
        future = asyncio.get_running_loop().create_future()
        _count_hit(stats, request, lookup_ns)
        future.set_result(outputs)
        if on_done is not None:
            # After submit() returns, as from a scheduler: the caller's callback reads what
            # submit() returned to it.
            asyncio.get_running_loop().call_soon(on_done, future)
        return future

    def _store(
        self, key: bytes, stats: ModelStats, lookup_ns: int, future: asyncio.Future[Outputs]
    ) -> None:
        insertion_ns = 0
        if not future.cancelled() and future.exception() is None:  # only successes are cached
            assert isinstance(self.cache, ResponseCache)
            insertion_ns = self.cache.put(key, future.result())
        stats.cache_miss.add(lookup_ns + insertion_ns)


class _RedisLookup:
    """One request to a model that caches in Redis: asked, then answered from the entry or
    by the model, whose answer is then stored."""

    __slots__ = (
        "answer",
        "cache",
        "key",
        "lookup_ns",
        "model",
        "on_done",
        "request",
        "started_ns",
        "stats",
        "submit",
    )

    def __init__(
        self,
        cache: RedisCache,
        key: bytes,
        request: InferRequest,
        model: ModelVersion,
        stats: ModelStats,
        submit: Submit,
        on_done: OnDone | None,
    ) -> None:
        self.cache, self.key, self.request, self.model = cache, key, request, model
        self.stats, self.submit, self.on_done = stats, submit, on_done
        self.answer: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self.lookup_ns = 0
        self.started_ns = time.monotonic_ns()
        found = cache.get(key)
        found.add_done_callback(self._looked_up)
        self.answer.add_done_callback(lambda _: found.cancel())  # a requester that left

    def _looked_up(self, found: asyncio.Future[Outputs | None]) -> None:
        if self.answer.done():
            return  # the requester left while Redis was asked
        outputs = found.result()
        if outputs is not None and not holds_answer(outputs, self.request, self.model):
            outputs = None
        self.lookup_ns = time.monotonic_ns() - self.started_ns
        self.cache.record_lookup(outputs is not None, self.lookup_ns)
        if outputs is not None:
            _count_hit(self.stats, self.request, self.lookup_ns)
            resolve(self.answer, self.on_done, outputs)
            return
        try:
            future = self.submit(None)
        except Exception as exc:  # refused at once (a full queue): the requester hears it
            self.stats.cache_miss.add(self.lookup_ns)
            resolve(self.answer, self.on_done, exc)
            return
        self.answer.add_done_callback(lambda _: future.cancel())
        future.add_done_callback(self._answered)

    def _answered(self, future: asyncio.Future[Outputs]) -> None:
        """The model answered after a miss: the answer goes first, then into Redis."""
        if future.cancelled():
            self.answer.cancel()
            self.stats.cache_miss.add(self.lookup_ns)
            return
        outcome = future.exception()
        if outcome is not None:
            self.stats.cache_miss.add(self.lookup_ns)
            resolve(self.answer, self.on_done, outcome)
            return
        outputs = future.result()
        resolve(self.answer, self.on_done, outputs)
        stats, lookup_ns = self.stats, self.lookup_ns
        self.cache.put(
            self.key, outputs, lambda insert_ns: stats.cache_miss.add(lookup_ns + insert_ns)
        )


def _count_hit(stats: ModelStats, request: InferRequest, lookup_ns: int) -> None:
    now = time.monotonic_ns()
    stats.cache_hit.add(lookup_ns)
    stats.queue.add(lookup_ns)
    stats.queue_us.observe(lookup_ns / 1000)
    stats.success.add(now - request.arrival_ns)
    stats.request_us.observe((now - request.arrival_ns) / 1000)
    stats.last_inference_ms = time.time_ns() // 1_000_000
