"""Per model-version scheduler: a queue on the event loop, `decide()` to form batches, and one
OS thread per model instance to execute them.

Hand-offs are per batch, not per request: the loop puts a whole batch on an instance thread's
queue, and the thread wakes the loop once with every request's result.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from inferd.backends.base import ModelInstance
from inferd.batching.policy import BatchPolicy, Dispatch, decide
from inferd.batching.stats import BatchStats, ModelStats
from inferd.batching.tensors import concat_inputs, split_outputs
from inferd.server.errors import InferdError, internal, unavailable

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass(slots=True, eq=False)
class Pending:
    inputs: dict[str, np.ndarray]
    batch_size: int
    shape_key: Hashable
    arrival_ns: int
    future: asyncio.Future[Outputs]
    enqueued_ns: int = field(default_factory=time.monotonic_ns)


@dataclass(slots=True)
class _Timings:
    dispatched_ns: int
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


class _Worker:
    """One model instance and the only thread that ever touches it."""

    def __init__(self, scheduler: Scheduler, instance: ModelInstance, name: str) -> None:
        self.instance = instance
        self._scheduler = scheduler
        self._jobs: queue.SimpleQueue[list[Pending] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, batch: list[Pending]) -> None:
        self._jobs.put(batch)

    def stop(self) -> None:
        """Close the instance on its own thread, then end the thread (blocking: call off-loop)."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (batch := self._jobs.get()) is not None:
            timings = _Timings(dispatched_ns=time.monotonic_ns())
            result: list[Outputs] | BaseException
            try:
                result = self._execute(batch, timings)
            except BaseException as exc:  # reported per request; the thread lives on
                result = exc
            try:
                self._scheduler.loop.call_soon_threadsafe(
                    self._scheduler.finish, self, batch, result, timings
                )
            except RuntimeError:  # the loop is gone (process exit); nobody waits any more
                return
        try:
            self.instance.close()
        except Exception:
            log.exception("closing an instance of %s failed", self._scheduler.model)

    def _execute(self, batch: list[Pending], timings: _Timings) -> list[Outputs]:
        start = time.perf_counter_ns()
        inputs = concat_inputs([p.inputs for p in batch])
        infer_start = time.perf_counter_ns()
        outputs = self.instance.execute(inputs)
        infer_end = time.perf_counter_ns()
        per_request = split_outputs(outputs, [p.batch_size for p in batch])
        end = time.perf_counter_ns()
        timings.input_ns = infer_start - start
        timings.infer_ns = infer_end - infer_start
        timings.output_ns = end - infer_end
        return per_request


class Scheduler:
    """Queues requests for one model version and runs batches on free instances."""

    def __init__(
        self,
        model: str,
        policy: BatchPolicy,
        instances: Sequence[ModelInstance],
        loop: asyncio.AbstractEventLoop,
        stats: ModelStats | None = None,
    ) -> None:
        self.model = model
        self.loop = loop
        self.stats = stats or ModelStats()
        self._policy = policy
        self._queue: deque[Pending] = deque()
        self._workers = [_Worker(self, inst, f"{model}-{i}") for i, inst in enumerate(instances)]
        self._idle: list[_Worker] = list(self._workers)
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._drained = asyncio.Event()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return len(self._workers) - len(self._idle)

    def submit(
        self, inputs: dict[str, np.ndarray], batch_size: int, shape_key: Hashable, arrival_ns: int
    ) -> asyncio.Future[Outputs]:
        if self._closing:
            raise unavailable(f"model '{self.model}' is unloading")
        future: asyncio.Future[Outputs] = self.loop.create_future()
        self._queue.append(Pending(inputs, batch_size, shape_key, arrival_ns, future))
        if self._idle and not self._scheduled:
            # Deciding on the next loop turn lets requests that arrived together batch together.
            self._scheduled = True
            self.loop.call_soon(self._schedule)
        return future

    def _schedule(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue_ = self._queue
        while self._idle and queue_:
            while queue_ and queue_[0].future.done():  # cancelled by the client
                queue_.popleft()
            now = time.monotonic_ns()
            decision = decide(queue_, now, self._policy, len(self._idle))
            if isinstance(decision, Dispatch):
                batch = [queue_.popleft() for _ in range(decision.count)]
                batch = [p for p in batch if not p.future.done()]
                if batch:
                    self._idle.pop().submit(batch)
                continue
            if decision.until_ns is not None:
                delay = max(0.0, (decision.until_ns - now) / 1e9)
                self._timer = self.loop.call_later(delay, self._schedule)
            break
        self._check_drained()

    def finish(
        self,
        worker: _Worker,
        batch: list[Pending],
        result: list[Outputs] | BaseException,
        timings: _Timings,
    ) -> None:
        """Runs on the loop, once per executed batch."""
        self._idle.append(worker)
        now = time.monotonic_ns()
        stats = self.stats
        if isinstance(result, BaseException):
            error = result if isinstance(result, InferdError) else _execution_error(self, result)
            for pending in batch:
                stats.fail.add(now - pending.arrival_ns)
                if not pending.future.done():
                    pending.future.set_exception(error)
        else:
            self._record_batch(batch, timings)
            for pending, outputs in zip(batch, result, strict=True):
                stats.success.add(now - pending.arrival_ns)
                if not pending.future.done():
                    pending.future.set_result(outputs)
        if self._queue:
            self._schedule()
        else:
            self._check_drained()

    def _record_batch(self, batch: list[Pending], t: _Timings) -> None:
        stats = self.stats
        n = len(batch)
        for pending in batch:
            stats.queue.add(t.dispatched_ns - pending.enqueued_ns)
        stats.compute_input.add(t.input_ns * n, n)
        stats.compute_infer.add(t.infer_ns * n, n)
        stats.compute_output.add(t.output_ns * n, n)
        size = sum(p.batch_size for p in batch)
        stats.inference_count += size
        stats.execution_count += 1
        stats.last_inference_ms = time.time_ns() // 1_000_000
        per_size = stats.batches.get(size)
        if per_size is None:
            per_size = stats.batches[size] = BatchStats()
        per_size.compute_input.add(t.input_ns)
        per_size.compute_infer.add(t.infer_ns)
        per_size.compute_output.add(t.output_ns)

    def _check_drained(self) -> None:
        if self._closing and not self._queue and len(self._idle) == len(self._workers):
            self._drained.set()

    async def close(self) -> None:
        """Refuse new work, let queued and running requests finish, then free the instances."""
        self._closing = True
        self._check_drained()
        if self._queue and self._idle and not self._scheduled:
            self._schedule()
        await self._drained.wait()
        if self._timer is not None:
            self._timer.cancel()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self._workers))


def _execution_error(scheduler: Scheduler, exc: BaseException) -> InferdError:
    log.warning("model '%s' failed to execute a batch: %s", scheduler.model, exc)
    return internal(f"model '{scheduler.model}' failed to execute: {exc}")
