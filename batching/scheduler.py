"""Per model-version scheduler: priority queues on the event loop, `decide()` to form batches,
and one OS thread per model instance to execute them.

Hand-offs are per batch, not per request: the loop puts a whole batch on an instance thread's
queue, and the thread wakes the loop once with every request's result.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from inferd.backends.base import ModelInstance
from inferd.batching.estimator import ExecTimeEstimator, LatenessMargin
from inferd.batching.policy import BatchPolicy, Dispatch, Wait, decide, decide_ahead
from inferd.batching.rate_limiter import Ticket
from inferd.batching.stats import BatchStats, ModelStats
from inferd.batching.tensors import BatchLayout
from inferd.batching.worker import Ahead, Begun, Outcome, PerRequestOutcome, Timings, Worker
from inferd.repository.config import QueuePolicy
from inferd.server.errors import (
    ErrorCode,
    InferdError,
    internal,
    no_active_instance,
    unavailable,
    with_request_id,
)
from inferd.server.types import InferRequest

if TYPE_CHECKING:  # decoupled.py builds on this module
    from inferd.batching.decoupled import OpenStreams

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
# Told of a request's outcome the moment the scheduler resolves its future, on the loop, without
# the loop turn a done-callback waits for (no callback for a cancelled request).
OnDone = Callable[[asyncio.Future[Outputs]], None]

# Failure reasons, as Triton's nv_inference_request_failure labels them.
REJECTED, CANCELED, BACKEND = "REJECTED", "CANCELED", "BACKEND"


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    batch: BatchPolicy
    priority_levels: int = 0  # 0 = a single queue
    default_priority: int = 0
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    level_queue_policies: dict[int, QueuePolicy] = field(default_factory=dict)
    preserve_ordering: bool = False
    latency_slo_ns: int = 0  # the model's latency objective; 0 = none
    inline_max_ns: int = 0  # batches of at most this CPU time may run on the loop (Worker)
    # Decoupled models' schedulers hold their requests' response streams (batching/decoupled.py);
    # on unload they wait this long for requests still streaming responses.
    decoupled: bool = False
    decoupled_unload_timeout_s: float = 30.0
    # A model whose requests may come with a response stream or without (an MLServer model:
    # infer calls predict(), infer_stream predict_stream()): its scheduler holds streams too.
    streams_optional: bool = False

    def queue_policy(self, level: int) -> QueuePolicy:
        return self.level_queue_policies.get(level, self.default_queue_policy)


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """Per-request scheduling parameters (already parsed from the protocol's parameters)."""

    priority: int = 0  # 0 = the model's default level
    timeout_us: int = 0  # queue timeout override; 0 = the policy's
    latency_slo_ns: int = 0  # 0 = the model's objective


DEFAULT_OPTIONS = RequestOptions()
# uvloop's timers count whole milliseconds (and asyncio's epoll waits do too): a shorter delay
# fires at once.
TIMER_RESOLUTION_NS = 1_000_000


@dataclass(slots=True, eq=False)
class Pending:
    inputs: dict[str, np.ndarray]
    batch_size: int
    shape_key: Hashable
    arrival_ns: int
    future: asyncio.Future[Outputs]
    level: int = 0  # queue index: 0 is the highest priority
    deadline_ns: int | None = None  # latency objective, less the safety margin: planned end
    due_ns: int | None = None  # latency objective: when the answer is due
    timeout_ns: int | None = None  # queue timeout, absolute
    delay_on_timeout: bool = False
    probe: bool = False  # admitted despite the estimate, to measure it again
    on_done: OnDone | None = None
    enqueued_ns: int = 0
    queued: bool = True
    outcome: Outputs | BaseException | None = None  # held back for preserve_ordering
    # The request itself, for instances that take requests one by one (id, parameters,
    # requested outputs); a reference only, nothing is built from it on the batched path.
    request: InferRequest | None = None


class Scheduler:
    """Queues requests for one model version and runs batches on free instances."""

    def __init__(
        self,
        model: str,
        config: SchedulerConfig,
        instances: Sequence[ModelInstance],
        loop: asyncio.AbstractEventLoop,
        stats: ModelStats | None = None,
        layout: BatchLayout | None = None,  # shape buckets, ragged inputs
        tickets: Sequence[Ticket] = (),  # the rate limiter's, one per instance; () = off
        streams: OpenStreams | None = None,  # a decoupled model's
    ) -> None:
        self.model = model
        self.loop = loop
        self.stats = stats or ModelStats()
        self.streams = streams
        self.estimator = ExecTimeEstimator()
        self.margin = LatenessMargin()
        self._config = config
        self._policy = config.batch
        # One queue per priority level, then requests whose timeout moved them to the back.
        self._queues: list[deque[Pending]] = [
            deque() for _ in range(max(1, config.priority_levels))
        ]
        self._delayed: deque[Pending] = deque()
        self._timeouts: list[tuple[int, int, Pending]] = []  # heap of (timeout, seq, pending)
        self._seq = itertools.count()
        self._ordered: deque[Pending] | None = deque() if config.preserve_ordering else None
        self._queued = 0
        self._executing = 0  # requests handed to instances and not finished yet
        # Batches queued behind a busy instance's running one (policy.decide_ahead). As Triton
        # prefetches batches: only where a queued request cannot time out, be refused by the
        # queue's bound or be overtaken by a higher priority; and not under the rate limiter,
        # which admits an instance batch by batch.
        self._ahead_allowed = (
            not tickets and config.priority_levels == 0 and _plain(config.default_queue_policy)
        )
        # Each busy instance's queued batch: an Ahead while the instance may not have started
        # it, a Begun once it has it (a stub process that was sent it early).
        self._ahead: dict[Worker, Ahead | Begun] = {}
        self._queued_items = 0  # sum of the queued requests' batch sizes
        self._busy_until: dict[Worker, int] = {}  # expected end of each running batch
        self._workers = [
            Worker(
                inst,
                f"{model}-{i}",
                loop,
                self._finish,
                layout,
                config.inline_max_ns,
                tickets[i] if tickets else None,
            )
            for i, inst in enumerate(instances)
        ]
        self._idle: list[Worker] = list(self._workers)
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._drained = asyncio.Event()

    @property
    def queued(self) -> int:
        """Requests waiting for an instance (the pending-request gauge)."""
        return self._queued + self._ahead_requests()

    @property
    def inflight(self) -> int:
        """Requests queued or executing."""
        return self._queued + self._ahead_requests() + self._executing

    def _ahead_requests(self) -> int:
        """Requests in batches queued behind running ones (read by the metrics only)."""
        return sum(len(ahead.batch) for ahead in self._ahead.values())

    @property
    def busy(self) -> int:
        return len(self._workers) - len(self._idle)

    @property
    def instances(self) -> int:
        return len(self._workers)

    # ---- submitting ------------------------------------------------------------------------

    def submit(
        self,
        inputs: dict[str, np.ndarray],
        batch_size: int,
        shape_key: Hashable,
        arrival_ns: int,
        options: RequestOptions = DEFAULT_OPTIONS,
        on_done: OnDone | None = None,
        request: InferRequest | None = None,
    ) -> asyncio.Future[Outputs]:
        if self._closing:
            raise unavailable(f"model '{self.model}' is unloading")
        if not self._workers:
            raise no_active_instance(self.model)
        level = self._level(options.priority)
        policy = self._config.queue_policy(level + 1)
        queue = self._queues[level]
        now = time.monotonic_ns()
        if policy.max_queue_size and len(queue) >= policy.max_queue_size:
            # Triton 2.51's words; like Triton, no failure of the model is counted.
            request_id = "" if request is None else request.id
            raise unavailable(with_request_id(request_id, "Exceeds maximum queue size"))
        slo_ns = options.latency_slo_ns or self._config.latency_slo_ns
        deadline = arrival_ns + self.margin.planned(slo_ns) if slo_ns else None
        probe = False
        if deadline is not None and self._forecast(now, batch_size) > deadline:
            if self._idle and not self._queued:
                # Nothing else to do: run it anyway, so that an estimate made stale by a hiccup
                # (a pause, a noisy neighbour) is measured again instead of locking the model out.
                probe = True
            else:
                self.stats.fail_request(now - arrival_ns, REJECTED)
                raise _slo_error(self.model, slo_ns)
        future: asyncio.Future[Outputs] = self.loop.create_future()
        pending = Pending(
            inputs,
            batch_size,
            shape_key,
            arrival_ns,
            future,
            level,
            deadline,
            due_ns=arrival_ns + slo_ns if slo_ns else None,
            probe=probe,
            on_done=on_done,
            enqueued_ns=now,
            request=request,
        )
        timeout_us = _timeout_us(policy, options.timeout_us)
        if timeout_us:
            pending.timeout_ns = now + timeout_us * 1000
            pending.delay_on_timeout = policy.delay_on_timeout
            heapq.heappush(self._timeouts, (pending.timeout_ns, next(self._seq), pending))
        queue.append(pending)
        self._queued += 1
        self._queued_items += batch_size
        if self._ordered is not None:
            self._ordered.append(pending)
        if not self._scheduled:
            # Deciding on the next loop turn lets requests that arrived together batch together.
            self._scheduled = True
            self.loop.call_soon(self._schedule)
        return future

    def _level(self, priority: int) -> int:
        levels = self._config.priority_levels
        if levels == 0:
            return 0  # no priority levels configured: Triton ignores the parameter
        if priority == 0 or priority > levels:  # as Triton: the default level
            priority = self._config.default_priority
        return priority - 1

    def admit(self, arrival_ns: int) -> None:
        """Early admission against the model's latency objective, before a request is even
        decoded: a rejection then costs the front door almost nothing. Requests with their own
        objective are checked again at submit."""
        slo_ns = self._config.latency_slo_ns
        if not slo_ns or (self._idle and not self._queued):
            return
        now = time.monotonic_ns()
        if self._forecast(now, 1) > arrival_ns + self.margin.planned(slo_ns):
            self.stats.fail_request(now - arrival_ns, REJECTED)
            raise _slo_error(self.model, slo_ns)

    def _forecast(self, now: int, batch_size: int) -> int:
        """When a request arriving now would finish: once an instance frees up (if none is
        idle), the queued items and this one run in full batches shared among the instances."""
        size = max(1, self._policy.max_batch_size)
        full, rest = divmod(self._queued_items + batch_size, size)
        work = full * self.estimator(size) + (self.estimator(rest) if rest else 0)
        start = now if self._idle else max(now, min(self._busy_until.values()))
        return start + work // len(self._workers) + self.estimator.return_lag_ns

    # ---- forming batches -------------------------------------------------------------------

    def _waiting(self) -> Iterator[Pending]:
        for queue in self._queues:
            yield from queue
        yield from self._delayed

    def _pop(self) -> Pending:
        for queue in self._queues:
            if queue:
                return queue.popleft()
        return self._delayed.popleft()

    def _schedule(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = time.monotonic_ns()
        self._expire(now)
        if self._ahead and self._idle:
            now = self._take_back_ahead(now)
        wake_at: int | None = None
        while self._idle and self._queued:
            free = len(self._idle)
            decision = decide(self._waiting(), now, self._policy, free, self.estimator)
            if isinstance(decision, Wait) and _too_short(decision.until_ns, now):
                # The loop's timers cannot wait that briefly (they would fire at once, over
                # and over: a spinning loop). Decide as at the end of the wait instead, which
                # dispatches a little early and never later than the configured delay.
                assert decision.until_ns is not None
                decision = decide(
                    self._waiting(), decision.until_ns, self._policy, free, self.estimator
                )
            if not isinstance(decision, Dispatch):
                wake_at = decision.until_ns
                break
            batch = self._drop_hopeless(self._take(decision.count), now)
            if batch:
                now = self._dispatch(batch, now)
        if self._ahead_allowed and self._queued and not self._idle:
            self._queue_ahead()
        if self._timeouts:
            # Timeouts fire even while every instance is busy (unlike Triton, server#7512).
            wake_at = min(wake_at or self._timeouts[0][0], self._timeouts[0][0])
        if wake_at is not None:
            # Whole timer ticks, rounded down: a wait never overshoots by rounding up.
            ticks = max(1, (wake_at - now) // TIMER_RESOLUTION_NS)
            self._timer = self.loop.call_later(ticks * TIMER_RESOLUTION_NS / 1e9, self._schedule)
        self._check_drained()

    def _dispatch(self, batch: list[Pending], now: int) -> int:
        """Run `batch` on an idle instance; the time after (a batch run inline takes some)."""
        self._executing += len(batch)
        worker = self._idle.pop()
        items = sum(p.batch_size for p in batch)
        self._busy_until[worker] = now + self.estimator(items)
        ran = worker.submit(batch, items)
        if ran is not None:  # on this thread: answered now, before the loop reads on
            self._finish(worker, batch, *ran, schedule=False)
            now = time.monotonic_ns()
        return now

    def _take_back_ahead(self, now: int) -> int:
        """An instance fell idle while another's queued batch waits behind a running one (a
        batch that took longer than expected): the idle instance runs it instead, oldest
        first, as when every instance takes from one queue."""
        for worker, ahead in list(self._ahead.items()):
            if not self._idle:
                break
            if not isinstance(ahead, Ahead) or not worker.take_back(ahead):
                continue  # the instance has it already
            del self._ahead[worker]
            batch = ahead.batch
            self._busy_until[worker] -= self.estimator(sum(p.batch_size for p in batch))
            now = self._dispatch(batch, now)
        return now

    def _take(self, count: int) -> list[Pending]:
        """The first `count` queued requests, less those cancelled while queued."""
        batch: list[Pending] = []
        for _ in range(count):
            pending = self._pop()
            pending.queued = False
            self._queued -= 1
            self._queued_items -= pending.batch_size
            if not pending.future.done():
                batch.append(pending)
            else:  # cancelled while queued: dropped
                end_stream(pending.request)
        return batch

    def _queue_ahead(self) -> None:
        """Every instance busy: queue a batch behind the running one of each instance that has
        none yet, the soonest done first."""
        while self._queued and len(self._ahead) < len(self._busy_until):  # some have none
            waiting = [w for w in self._busy_until if w not in self._ahead]
            decision = decide_ahead(self._waiting(), self._policy)
            if not isinstance(decision, Dispatch):
                return
            batch = self._take(decision.count)
            if batch:
                worker = min(waiting, key=self._busy_until.__getitem__)
                self._busy_until[worker] += self.estimator(sum(p.batch_size for p in batch))
                self._ahead[worker] = worker.submit_next(batch)

    def _expire(self, now: int) -> None:
        """Queue timeouts: REJECT fails the request, DELAY moves it behind everything else."""
        while self._timeouts and self._timeouts[0][0] <= now:
            _, _, pending = heapq.heappop(self._timeouts)
            if not pending.queued or pending.future.done():
                continue
            self._queues[pending.level].remove(pending)
            if pending.delay_on_timeout:
                self._delayed.append(pending)
                continue
            pending.queued = False
            self._queued -= 1
            self._queued_items -= pending.batch_size
            self.stats.fail_request(now - pending.arrival_ns, REJECTED)
            self._complete(pending, unavailable("Request timeout expired"))

    def _drop_hopeless(self, batch: list[Pending], now: int) -> list[Pending]:
        """Reject requests this batch would finish too late for, instead of spending a slot."""
        if all(p.deadline_ns is None for p in batch):
            return batch
        finish = now + self.estimator(sum(p.batch_size for p in batch))
        finish += self.estimator.return_lag_ns
        kept: list[Pending] = []
        for pending in batch:
            late = pending.deadline_ns is not None and finish > pending.deadline_ns
            if late and not pending.probe:
                self.stats.fail_request(now - pending.arrival_ns, REJECTED)
                assert pending.due_ns is not None
                self._complete(pending, _slo_error(self.model, pending.due_ns - pending.arrival_ns))
            else:
                kept.append(pending)
        return kept

    # ---- results (on the loop, once per batch) ---------------------------------------------

    def _finish(
        self,
        worker: Worker,
        batch: list[Pending],
        result: Outcome,
        t: Timings,
        schedule: bool = True,  # False when _schedule itself reports a batch it ran inline
    ) -> None:
        self._executing -= len(batch)
        now = time.monotonic_ns()
        queued_ahead = self._ahead.pop(worker, None)
        if queued_ahead is None:
            self._idle.append(worker)
            self._busy_until.pop(worker, None)
        else:  # the instance went on with it at once
            ahead = queued_ahead.batch
            self._executing += len(ahead)
            self._busy_until[worker] = now + self.estimator(sum(p.batch_size for p in ahead))
        stats = self.stats
        if isinstance(result, BaseException):
            error = result if isinstance(result, InferdError) else self._execution_error(result)
            record_failed_batch(stats, batch, t)
            for pending in batch:
                stats.fail_request(now - pending.arrival_ns, BACKEND)
                self._complete(pending, error)
        else:
            items = sum(p.batch_size for p in batch)
            self.estimator.observe(items, t.total_ns)
            worker.cpu.observe(items, t.cpu_ns)
            self.estimator.observe_return_lag(now - t.dispatched_ns - t.total_ns)
            record_batch(self.stats, batch, t, now)
            if isinstance(result, PerRequestOutcome):
                self._complete_each(batch, result, now)
            else:
                for pending, outputs in zip(batch, result, strict=True):
                    elapsed = now - pending.arrival_ns
                    stats.success.add(elapsed)
                    stats.request_us.observe(elapsed / 1000)
                    self._complete(pending, outputs)
            self._judge_objectives(batch)
        if schedule and (self._queued or self._ahead):
            self._schedule()
        else:
            self._check_drained()

    def _complete_each(self, batch: list[Pending], outcome: PerRequestOutcome, now: int) -> None:
        """A batch that ran, some of whose requests failed on their own."""
        stats = self.stats
        for pending, result in zip(batch, outcome.results, strict=True):
            elapsed = now - pending.arrival_ns
            if isinstance(result, BaseException):
                stats.fail_request(elapsed, BACKEND)
                error = result if isinstance(result, InferdError) else self._execution_error(result)
                self._complete(pending, error)
            else:
                stats.success.add(elapsed)
                stats.request_us.observe(elapsed / 1000)
                self._complete(pending, result)

    def _judge_objectives(self, batch: list[Pending]) -> None:
        """Count answers by and after their objective once the whole batch is answered: the
        last answer of a batch goes out after the others, and the margin must cover it too."""
        now = time.monotonic_ns()
        stats = self.stats
        for pending in batch:
            if pending.due_ns is None:
                continue
            late = now > pending.due_ns
            self.margin.observe(late)
            if late:
                stats.objective_missed += 1
            else:
                stats.objective_met += 1

    def _complete(self, pending: Pending, outcome: Outputs | BaseException) -> None:
        if self._ordered is None:
            resolve(pending.future, pending.on_done, outcome)
            return
        pending.outcome = outcome  # released in arrival order
        ordered = self._ordered
        while ordered and (ordered[0].outcome is not None or ordered[0].future.done()):
            head = ordered.popleft()
            if head.outcome is not None:
                resolve(head.future, head.on_done, head.outcome)
                head.outcome = None

    def _execution_error(self, exc: BaseException) -> InferdError:
        log.warning("model '%s' failed to execute a batch: %s", self.model, exc)
        return internal(f"model '{self.model}' failed to execute: {exc}")

    # ---- shutdown --------------------------------------------------------------------------

    def _check_drained(self) -> None:
        if self._closing and not self._queued and len(self._idle) == len(self._workers):
            self._drained.set()

    async def close(self) -> None:
        """Refuse new work, let queued and running requests finish (and a decoupled model's
        send their final responses), then free the instances."""
        await self.drain()
        if self.streams is not None:
            await self.streams.wait_closed()
        await self.stop()

    async def drain(self) -> None:
        """Refuse new work and wait until queued and running requests are done."""
        self._closing = True
        if self._queued and not self._scheduled:
            self._schedule()
        self._check_drained()
        await self._drained.wait()
        if self._timer is not None:
            self._timer.cancel()

    async def stop(self) -> None:
        """Free the instances (after drain())."""
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self._workers))


class Executed(Protocol):
    """What record_batch() reads of a request that ran in a batch."""

    @property
    def enqueued_ns(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def request(self) -> InferRequest | None: ...


def record_batch(stats: ModelStats, batch: Sequence[Executed], t: Timings, now: int) -> None:
    """Count a batch that ran (Triton's statistics: queue and compute times per request,
    counts per batch size), and stamp the traces of the traced requests in it."""
    n = len(batch)
    if not n:
        return
    for pending in batch:
        queue_ns = t.dispatched_ns - pending.enqueued_ns
        stats.queue.add(queue_ns)
        stats.queue_us.observe(queue_ns / 1000)
        request = pending.request
        if request is not None:
            if request.trace is not None:
                request.trace.executed(
                    pending.enqueued_ns, t.dispatched_ns, t.input_ns, t.infer_ns, t.output_ns, now
                )
            if request.compute is not None:
                request.compute.input_ns += t.input_ns
                request.compute.infer_ns += t.infer_ns
                request.compute.output_ns += t.output_ns
    stats.compute_us.observe(t.total_ns / 1000, n)  # the batch's compute time, once per request
    stats.compute_input.add(t.input_ns * n, n)
    stats.compute_infer.add(t.infer_ns * n, n)
    stats.compute_output.add(t.output_ns * n, n)
    size = sum(p.batch_size for p in batch)
    stats.inference_count += size
    stats.batch_size.observe(size)
    stats.last_inference_ms = time.time_ns() // 1_000_000
    _count_execution(stats, size, t)


def record_failed_batch(stats: ModelStats, batch: Sequence[Executed], t: Timings) -> None:
    """A batch whose execution failed is an execution all the same, as Triton counts it: in
    the execution count and its size's statistics; its requests count as failures only."""
    if batch:
        _count_execution(stats, sum(p.batch_size for p in batch), t)


def _count_execution(stats: ModelStats, size: int, t: Timings) -> None:
    stats.execution_count += 1
    per_size = stats.batches.get(size)
    if per_size is None:
        per_size = stats.batches[size] = BatchStats()
    per_size.compute_input.add(t.input_ns)
    per_size.compute_infer.add(t.infer_ns)
    per_size.compute_output.add(t.output_ns)


def _too_short(until_ns: int | None, now_ns: int) -> bool:
    return until_ns is not None and until_ns - now_ns < TIMER_RESOLUTION_NS


def end_stream(request: InferRequest | None) -> None:
    """A cancelled request that no run will answer: a decoupled one's response stream ends
    here (else it stays open, and its model's unload waits for it)."""
    stream = getattr(request, "responses", None)  # batching/decoupled.py's StreamRequest
    if stream is not None:
        stream.abort(InferdError(ErrorCode.CANCELLED, "the request was cancelled"))


def resolve(
    future: asyncio.Future[Outputs], on_done: OnDone | None, outcome: Outputs | BaseException
) -> None:
    """Answer a request (every scheduler's, and an ensemble's), then tell `on_done`."""
    if future.done():
        return  # cancelled: the requester left
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
    if on_done is not None:
        try:
            on_done(future)
        except Exception:  # one requester's failure must not cut the batch's other answers
            log.exception("answering a request failed")


def _plain(policy: QueuePolicy) -> bool:
    """A queue policy under which a queued request waits as long as it takes."""
    return not (policy.default_timeout_us or policy.allow_timeout_override or policy.max_queue_size)


def _timeout_us(policy: QueuePolicy, requested_us: int) -> int:
    """A request may lower the policy's timeout when the policy allows overriding it."""
    default = policy.default_timeout_us
    if requested_us and policy.allow_timeout_override:
        return min(requested_us, default) if default else requested_us
    return default


def _slo_error(model: str, slo_ns: int) -> InferdError:
    return unavailable(
        f"Request for model '{model}' cannot meet its latency objective of "
        f"{slo_ns / 1e6:g} ms: rejected before execution"
    )
