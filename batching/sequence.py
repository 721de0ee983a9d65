"""The sequence batcher: the scheduler of a stateful model (`sequence_batching`).

Each sequence (a correlation ID between a START and an END request) is bound to one instance
for its life, and with the direct strategy to one batch slot of it; a sequence without a free
slot waits in a backlog, in arrival order. An instance runs at most one request of a sequence
per batch and one batch at a time, so a sequence's requests run strictly in arrival order and
each sees the implicit state the previous one left. The control inputs (START, END, READY,
CORRID) and the state inputs of every batch row come from `SequenceControls`.

An iterative sequence model (`iterative_sequence: true`) makes each request a sequence of its
own, with an ID of its own when the client gave none: the model may hand a request back
(`Rescheduled`) to run it again in a later batch, so that each batch mixes new requests with
ones in progress and a slot frees as soon as its request is done (continuous batching).

It offers the interface of `Scheduler` that the core, the metrics and unload use, and reuses
its `Worker` (one OS thread per instance, one hand-off and one loop wake per batch).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from inferd.backends.base import ModelInstance, Rescheduled
from inferd.batching.decoupled import OpenStreams
from inferd.batching.estimator import LatenessMargin
from inferd.batching.policy import BatchPolicy, Dispatch, Wait, decide
from inferd.batching.rate_limiter import Ticket
from inferd.batching.scheduler import (
    BACKEND,
    DEFAULT_OPTIONS,
    TIMER_RESOLUTION_NS,
    OnDone,
    Outputs,
    RequestOptions,
    end_stream,
    record_batch,
    resolve,
)
from inferd.batching.sequence_controls import SequenceControls, SequenceId
from inferd.batching.sequence_policy import DirectBatch, Slot, decide_direct
from inferd.batching.stats import ModelStats
from inferd.batching.tensors import BatchLayout
from inferd.batching.worker import Outcome, PerRequestOutcome, Timings, Worker
from inferd.repository.sequence_config import SequenceBatching, Strategy
from inferd.server.errors import InferdError, internal, invalid, no_active_instance, unavailable
from inferd.server.types import InferRequest

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class SeqPending:
    """A queued request of a sequence (also what `policy.decide` sees of it)."""

    inputs: dict[str, np.ndarray]
    shape_key: Hashable
    arrival_ns: int
    enqueued_ns: int
    future: asyncio.Future[Outputs]
    start: bool
    end: bool
    on_done: OnDone | None = None
    request: InferRequest | None = None
    batch_size: int = 1
    deadline_ns: int | None = None


@dataclass(slots=True, eq=False)
class Active:
    """One live sequence: its queued requests, where it runs, its implicit state."""

    key: SequenceId
    queue: deque[SeqPending] = field(default_factory=deque)
    lane: Lane | None = None
    slot: int = -1
    state: dict[str, np.ndarray] | None = None  # None = the initial state
    running: bool = False
    last_ns: int = 0


@dataclass(slots=True, eq=False)
class Row:
    """One row of a batch as the Worker runs it; padding rows have no `pending`."""

    inputs: dict[str, np.ndarray]
    pending: SeqPending | None
    sequence: Active | None
    batch_size: int = 1

    @property
    def request(self) -> InferRequest | None:
        return None if self.pending is None else self.pending.request


@dataclass(slots=True, eq=False)
class Lane:
    """One instance and its sequence slots."""

    worker: Worker
    slots: list[Active | None]
    busy: bool = False

    def free_slot(self) -> int:
        return next((i for i, s in enumerate(self.slots) if s is None), -1)


class SequenceScheduler:
    """Runs the requests of a stateful model's sequences on its instances."""

    def __init__(
        self,
        model: str,
        model_name: str,
        config: SequenceBatching,
        max_batch_size: int,
        instances: Sequence[ModelInstance],
        loop: asyncio.AbstractEventLoop,
        stats: ModelStats | None = None,
        inline_max_ns: int = 0,
        tickets: Sequence[Ticket] = (),  # the rate limiter's, one per instance; () = off
        streams: OpenStreams | None = None,  # a decoupled model's
        layout: BatchLayout | None = None,  # shape buckets, ragged inputs
    ) -> None:
        self.model = model
        self.loop = loop
        self.stats = stats or ModelStats()
        self.streams = streams
        self.margin = LatenessMargin()  # read by the metrics; no latency objective here
        self._name = model_name
        self._config = config
        self._idle_ns = config.max_sequence_idle_us * 1000
        self._iterative = config.iterative
        self._new_ids = itertools.count(1)  # an iterative model's IDs for requests without one
        self._delay_ns = config.max_queue_delay_us * 1000
        direct = config.strategy is Strategy.DIRECT
        if direct:
            slots = max(1, max_batch_size)
        else:
            slots = config.max_candidate_sequences or max(1, max_batch_size)
        self._direct = direct
        self._policy = BatchPolicy(max_batch_size, config.preferred_batch_sizes, self._delay_ns)
        self._controls = SequenceControls(model_name, config, max_batch_size > 0)
        self._lanes = [
            Lane(
                Worker(
                    inst,
                    f"{model}-{i}",
                    loop,
                    self._finish,
                    layout,
                    inline_max_ns,
                    tickets[i] if tickets else None,
                ),
                [None] * slots,
            )
            for i, inst in enumerate(instances)
        ]
        self._lane_of = {lane.worker: lane for lane in self._lanes}
        self._sequences: dict[SequenceId, Active] = {}
        self._backlog: deque[Active] = deque()
        self._queued = 0
        self._executing = 0
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._drained = asyncio.Event()

    # ---- what the core, the metrics and unload read ------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def inflight(self) -> int:
        return self._queued + self._executing

    @property
    def busy(self) -> int:
        return sum(1 for lane in self._lanes if lane.busy)

    @property
    def instances(self) -> int:
        return len(self._lanes)

    @property
    def sequences(self) -> int:
        """Live sequences (holding a slot or waiting for one)."""
        return len(self._sequences)

    def admit(self, arrival_ns: int) -> None:
        """No latency objective for sequence models: nothing to refuse early."""

    # ---- submitting --------------------------------------------------------------------------

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
        if not self._lanes:
            raise no_active_instance(self.model)
        # A request refused here is not counted as a failure of the model, as in Triton 2.51.
        key, start, end = self._controls.sequence_of(request, batch_size)
        if key is None:
            key = next(self._new_ids)
            request = _seen_as(request, key, start, end)
        active = self._sequences.get(key)
        if active is None:
            if not start:
                raise invalid(
                    f"inference request for sequence {key} to model '{self._name}' must "
                    "specify the START flag on the first request of the sequence"
                )
            active = self._begin(key)
        # START on a live sequence starts it again in its slot (as Triton): the state goes
        # back to the initial one when that request runs.
        now = time.monotonic_ns()
        future: asyncio.Future[Outputs] = self.loop.create_future()
        active.queue.append(
            SeqPending(inputs, shape_key, arrival_ns, now, future, start, end, on_done, request)
        )
        active.last_ns = now
        self._queued += 1
        if end or self._iterative:  # later requests with this id belong to a new sequence
            del self._sequences[key]
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._schedule)
        return future

    def _begin(self, key: SequenceId) -> Active:
        active = Active(key)
        self._sequences[key] = active
        if not self._place(active):
            self._backlog.append(active)
        return active

    def _place(self, active: Active) -> bool:
        """Bind a sequence to the free slot of the instance with the most free slots."""
        best: Lane | None = None
        best_free = 0
        for lane in self._lanes:
            free = lane.slots.count(None)
            if free > best_free:
                best, best_free = lane, free
        if best is None:
            return False
        slot = best.free_slot()
        best.slots[slot] = active
        active.lane, active.slot = best, slot
        return True

    def _release(self, active: Active) -> None:
        """The sequence ended or idled out: free its slot for the oldest waiting sequence."""
        if self._sequences.get(active.key) is active:
            del self._sequences[active.key]
        lane = active.lane
        if lane is None:
            return
        lane.slots[active.slot] = None
        active.lane = None
        while self._backlog and self._place(self._backlog[0]):
            self._backlog.popleft()

    # ---- forming batches ---------------------------------------------------------------------

    def _schedule(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = time.monotonic_ns()
        self._expire_idle(now)  # first, to free slots for waiting sequences
        wake_at: int | None = None
        progress = True
        while progress:  # again after a batch that ran inline: its instance is free again
            progress = False
            for lane in self._lanes:
                if lane.busy:
                    continue
                rows, until = self._form(lane, now)
                if rows:
                    self._dispatch(lane, rows)
                    now = time.monotonic_ns()
                    progress = True
                elif until is not None:
                    wake_at = until if wake_at is None else min(wake_at, until)
        idle_at = self._expire_idle(now)  # again: batches run inline may have left some idle
        if idle_at is not None:
            wake_at = idle_at if wake_at is None else min(wake_at, idle_at)
        if wake_at is not None:
            ticks = max(1, (wake_at - now) // TIMER_RESOLUTION_NS)
            self._timer = self.loop.call_later(ticks * TIMER_RESOLUTION_NS / 1e9, self._schedule)
        self._check_drained()

    def _expire_idle(self, now: int) -> int | None:
        """Release sequences without a request for max_sequence_idle (at once when closing:
        no request can come any more); return when the next one would expire."""
        if not self._sequences:
            return None
        limit = 0 if self._closing else self._idle_ns
        next_at: int | None = None
        for active in list(self._sequences.values()):
            if active.queue or active.running:
                continue
            expires = active.last_ns + limit
            if expires <= now:
                log.debug("model '%s': sequence %s idled out", self.model, active.key)
                self._release(active)
            elif next_at is None or expires < next_at:
                next_at = expires
        return next_at

    def _form(self, lane: Lane, now: int) -> tuple[list[Row], int | None]:
        """The next batch of an idle instance, or when to look again."""
        if self._direct:
            views = [
                Slot(False)
                if s is None
                else Slot(True, s.queue[0].enqueued_ns, s.queue[0].shape_key)
                if s.queue
                else Slot(True)
                for s in lane.slots
            ]
            decision = decide_direct(
                views, now, self._delay_ns, self._config.minimum_slot_utilization
            )
            if isinstance(decision, Wait) and _too_short(decision.until_ns, now):
                assert decision.until_ns is not None
                decision = decide_direct(
                    views, decision.until_ns, self._delay_ns, self._config.minimum_slot_utilization
                )
            if isinstance(decision, Wait):
                return [], decision.until_ns
            return self._direct_rows(lane, decision), None
        heads = sorted(
            (s for s in lane.slots if s is not None and s.queue),
            key=lambda s: s.queue[0].enqueued_ns,
        )
        queue = [s.queue[0] for s in heads]
        choice = decide(queue, now, self._policy, 1)
        if isinstance(choice, Wait) and _too_short(choice.until_ns, now):
            assert choice.until_ns is not None
            choice = decide(queue, choice.until_ns, self._policy, 1)
        if not isinstance(choice, Dispatch):
            return [], choice.until_ns
        return [self._row(s, self._pop(s)) for s in heads[: choice.count]], None

    def _direct_rows(self, lane: Lane, batch: DirectBatch) -> list[Row]:
        ready = set(batch.ready)
        filler: dict[str, np.ndarray] | None = None
        rows: list[Row | None] = []
        for index in range(batch.rows):
            active = lane.slots[index]
            if index in ready:
                assert active is not None
                row = self._row(active, self._pop(active))
                if filler is None:
                    filler = row.inputs
                rows.append(row)
            else:
                rows.append(None)
        assert filler is not None
        # Rows without a request copy another row's inputs, with READY=0 (as Triton).
        return [
            row if row is not None else self._padding(lane.slots[i], filler)
            for i, row in enumerate(rows)
        ]

    def _pop(self, active: Active) -> SeqPending:
        self._queued -= 1
        return active.queue.popleft()

    def _row(self, active: Active, pending: SeqPending) -> Row:
        state = None if pending.start else active.state
        inputs = self._controls.row(pending.inputs, active.key, pending.start, pending.end, state)
        return Row(inputs, pending, active)

    def _padding(self, active: Active | None, filler: dict[str, np.ndarray]) -> Row:
        state = active.state if active is not None else None
        return Row(self._controls.padding(filler, state), None, None)

    def _dispatch(self, lane: Lane, rows: list[Row]) -> None:
        lane.busy = True
        for row in rows:
            if row.sequence is not None:
                row.sequence.running = True
                self._executing += 1
        ran = lane.worker.submit(rows, len(rows))
        if ran is not None:  # ran on this thread
            self._finish(lane.worker, rows, *ran, schedule=False)

    # ---- results (on the loop, once per batch) -----------------------------------------------

    def _finish(
        self,
        worker: Worker,
        rows: list[Row],
        result: Outcome,
        t: Timings,
        schedule: bool = True,
    ) -> None:
        self._lane_of[worker].busy = False
        now = time.monotonic_ns()
        real = [(i, row) for i, row in enumerate(rows) if row.pending is not None]
        self._executing -= len(real)
        outcomes: Sequence[Outputs | BaseException]
        if isinstance(result, BaseException):
            outcomes = [result] * len(rows)
        else:
            # Padding rows are not inferences: only the rows that carried a request count.
            ran = [row.pending for _, row in real if row.pending is not None]
            record_batch(self.stats, ran, t, now)
            outcomes = result.results if isinstance(result, PerRequestOutcome) else result
        for index, row in real:
            pending, active = row.pending, row.sequence
            assert pending is not None and active is not None
            outcome = outcomes[index]
            elapsed = now - pending.arrival_ns
            if isinstance(outcome, Rescheduled) and self._iterative:
                self._count_success(elapsed)  # each run counts, as in Triton
                if not pending.future.done():
                    self._run_again(active, pending, now)
                    continue
                end_stream(pending.request)  # the client left: the request ends here
            elif isinstance(outcome, BaseException):
                # The sequence goes on: its state stays what the last good request left.
                self.stats.fail_request(elapsed, BACKEND)
                resolve(pending.future, pending.on_done, self._error(outcome))
            else:
                self._keep_state(active, outcome)
                self._count_success(elapsed)
                resolve(pending.future, pending.on_done, outcome)
            active.running = False
            active.last_ns = now
            if pending.end or self._iterative:
                self._release(active)
        if schedule and (self._queued or self._closing or self._sequences):
            self._schedule()  # also arms the idle timer of the sequences that just ran
        else:
            self._check_drained()

    def _count_success(self, elapsed_ns: int) -> None:
        self.stats.success.add(elapsed_ns)
        self.stats.request_us.observe(elapsed_ns / 1000)

    def _run_again(self, active: Active, pending: SeqPending, now: int) -> None:
        """A rescheduled request goes back to the head of its sequence's queue, in its slot,
        without START or END (as Triton); its next run counts from now."""
        pending.start = pending.end = False
        pending.arrival_ns = pending.enqueued_ns = now
        pending.request = _seen_as(pending.request, active.key, False, False)
        active.queue.appendleft(pending)
        active.running = False
        active.last_ns = now
        self._queued += 1

    def _keep_state(self, active: Active, outputs: Outputs) -> None:
        states = self._config.states
        if not states:
            return
        kept: dict[str, np.ndarray] = {}
        for state in states:
            value = outputs.get(state.output_name)
            if value is not None:  # a copy: the batch's output buffer may be reused
                kept[state.input_name] = np.array(value, copy=True)
        active.state = kept

    def _error(self, exc: BaseException) -> InferdError:
        if isinstance(exc, InferdError):
            return exc
        log.warning("model '%s' failed to execute a batch: %s", self.model, exc)
        return internal(f"model '{self.model}' failed to execute: {exc}")

    # ---- shutdown ----------------------------------------------------------------------------

    def _check_drained(self) -> None:
        if self._closing and not self._queued and not self._executing:
            self._drained.set()

    async def close(self) -> None:
        """Refuse new requests, run the queued ones (and let a decoupled model's send their
        final responses), then free the instances."""
        await self.drain()
        if self.streams is not None:
            await self.streams.wait_closed()
        await self.stop()

    async def drain(self) -> None:
        """Refuse new requests and run the queued ones (idle sequences are released at once,
        which frees slots for the waiting ones)."""
        self._closing = True
        if not self._scheduled:
            self._schedule()
        await self._drained.wait()
        if self._timer is not None:
            self._timer.cancel()

    async def stop(self) -> None:
        """Free the instances (after drain())."""
        await asyncio.gather(*(asyncio.to_thread(lane.worker.stop) for lane in self._lanes))


def _seen_as(
    request: InferRequest | None, key: SequenceId, start: bool, end: bool
) -> InferRequest | None:
    """The request as an iterative sequence model's next run sees it (a model that takes
    requests one by one reads its sequence parameters): with its sequence's ID and flags."""
    if request is None:
        return None
    parameters = {
        **request.parameters,
        "sequence_id": key,
        "sequence_start": start,
        "sequence_end": end,
    }
    return replace(request, parameters=parameters)


def _too_short(until_ns: int | None, now_ns: int) -> bool:
    return until_ns is not None and until_ns - now_ns < TIMER_RESOLUTION_NS
