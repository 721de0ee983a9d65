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
            return self._ask_redis(self.cache, key, request, model, stats, submit, on_done)
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

    def _ask_redis(
        self,
        cache: RedisCache,
        key: bytes,
        request: InferRequest,
        model: ModelVersion,
        stats: ModelStats,
        submit: Submit,
        on_done: OnDone | None,
    ) -> asyncio.Future[Outputs]:
        answer: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        lookup = cache.get(key)
        lookup.add_done_callback(
            partial(
                self._looked_up,
                cache,
                key,
                request,
                model,
                stats,
                submit,
                on_done,
                answer,
                time.monotonic_ns(),
            )
        )
        answer.add_done_callback(lambda _: lookup.cancel())  # a requester that left
        return answer

    def _looked_up(
        self,
        cache: RedisCache,
        key: bytes,
        request: InferRequest,
        model: ModelVersion,
        stats: ModelStats,
        submit: Submit,
        on_done: OnDone | None,
        answer: asyncio.Future[Outputs],
        start_ns: int,
        lookup: asyncio.Future[Outputs | None],
    ) -> None:
        if answer.done():
            return  # the requester left while Redis was asked
        outputs = lookup.result()
        if outputs is not None and not holds_answer(outputs, request, model):
            outputs = None
        lookup_ns = time.monotonic_ns() - start_ns
        cache.record_lookup(outputs is not None, lookup_ns)
        if outputs is not None:
            _count_hit(stats, request, lookup_ns)
            resolve(answer, on_done, outputs)
            return
        try:
            future = submit(None)
        except Exception as exc:  # refused at once (a full queue): the requester hears it
            stats.cache_miss.add(lookup_ns)
            resolve(answer, on_done, exc)
            return
        answer.add_done_callback(lambda _: future.cancel())
        future.add_done_callback(
            partial(self._answered_after_miss, cache, key, stats, lookup_ns, on_done, answer)
        )

    @staticmethod
    def _answered_after_miss(
        cache: RedisCache,
        key: bytes,
        stats: ModelStats,
        lookup_ns: int,
        on_done: OnDone | None,
        answer: asyncio.Future[Outputs],
        future: asyncio.Future[Outputs],
    ) -> None:
        if future.cancelled():
            answer.cancel()
            stats.cache_miss.add(lookup_ns)
            return
        outcome = future.exception()
        if outcome is not None:
            stats.cache_miss.add(lookup_ns)
            resolve(answer, on_done, outcome)
            return
        outputs = future.result()
        resolve(answer, on_done, outputs)  # the answer goes before the insert
        cache.put(key, outputs, lambda insertion_ns: stats.cache_miss.add(lookup_ns + insertion_ns))


def _count_hit(stats: ModelStats, request: InferRequest, lookup_ns: int) -> None:
    now = time.monotonic_ns()
    stats.cache_hit.add(lookup_ns)
    stats.queue.add(lookup_ns)
    stats.queue_us.observe(lookup_ns / 1000)
    stats.success.add(now - request.arrival_ns)
    stats.request_us.observe((now - request.arrival_ns) / 1000)
    stats.last_inference_ms = time.time_ns() // 1_000_000
