"""One model instance and the only OS thread that ever touches it."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from inferd.backends.base import InstanceRequest, ModelInstance, RequestOutcome
from inferd.batching.estimator import ExecTimeEstimator
from inferd.batching.rate_limiter import Ticket
from inferd.batching.tensors import BatchLayout, concat_inputs, split_outputs
from inferd.server.errors import internal
from inferd.server.types import InferRequest

log = logging.getLogger(__name__)

# An instance that may wait (ModelInstance.inline_until_slow) stops running on the loop when
# _SLOW_BATCHES of its last _JUDGED batches there took more than _SLOW times the inline budget.
_SLOW = 4
_SLOW_BATCHES = 3
_JUDGED = 100


class BatchItem(Protocol):
    inputs: dict[str, np.ndarray]
    batch_size: int
    request: InferRequest | None  # what instances that take requests one by one see of it


@dataclass(slots=True)
class Timings:
    dispatched_ns: int
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    cpu_ns: int = 0  # CPU time of the executing thread, for the inline rule

    @property
    def total_ns(self) -> int:
        return self.input_ns + self.infer_ns + self.output_ns


@dataclass(slots=True)
class PerRequestOutcome:
    """A batch whose requests failed one by one: each request's outputs or its error. Only
    instances that take requests one by one produce it, and only when some request failed, so
    the common path stays a plain list."""

    results: list[RequestOutcome]


@dataclass(slots=True)
class Begun:
    """A batch an attached instance (ModelInstance.answers_on_loop) was handed while the one
    before it still runs: it is the instance's now."""

    batch: list[Any]


@dataclass(slots=True)
class Sent:
    """A batch handed to an attached instance, until its answer comes (on the loop)."""

    batch: list[Any]
    timings: Timings


class Ahead:
    """A batch queued behind the running one. Whoever claims it first runs it: the instance's
    thread when it is done with the running one (an attached instance's thread: at once, to
    send it), or the loop, which moves it to an instance that fell idle first."""

    __slots__ = ("_claim", "batch")

    def __init__(self, batch: list[Any]) -> None:
        self.batch = batch
        self._claim = threading.Lock()

    def claim(self) -> bool:
        return self._claim.acquire(blocking=False)


BatchResult = list[dict[str, np.ndarray]] | PerRequestOutcome
Outcome = BatchResult | BaseException
# finish(worker, batch, per-request outputs or the exception, timings), called on the loop.
FinishCallback = Callable[["Worker", Any, Any, Timings], None]


class Worker:
    """Executes whole batches on its own thread and reports each one to the loop once.

    A batch shorter than a thread hop costs runs on the event loop instead, when the instance
    allows it (`ModelInstance.runs_on_any_thread`) and this instance's batches of that size
    have taken at most `inline_max_ns` of CPU: handing a 20 µs batch to a thread and back
    costs more than running it, since both threads then contend for the GIL and the loop waits
    for the instance thread to be scheduled. The instance still never runs two batches at once.

    An instance whose model runs in another process (`ModelInstance.answers_on_loop`, a stub)
    is attached: batches are handed to it from the loop when that cannot wait, and their
    answers are read and reported on the loop, so the thread only sends big batches and
    starts the process again.
    """

    def __init__(
        self,
        instance: ModelInstance,
        name: str,
        loop: asyncio.AbstractEventLoop,
        finish: FinishCallback,
        layout: BatchLayout | None = None,
        inline_max_ns: int = 0,
        ticket: Ticket | None = None,
    ) -> None:
        self.instance = instance
        self._layout = layout  # None = plain concat/split, nothing extra
        self._loop = loop
        self._finish = finish
        # A rate-limited instance may wait for its resources: never on the loop.
        self._ticket = ticket
        inline = instance.runs_on_any_thread and ticket is None
        self._inline_max_ns = inline_max_ns if inline else 0
        self._inline_slow: deque[bool] = deque(maxlen=_JUDGED)  # inline_until_slow's record
        self._inline_slow_count = 0  # the slow ones in it
        # Chosen once, so that batched instances pay nothing per batch for the other path.
        # Requests handed over one by one are never concatenated, so a layout does not apply.
        self._execute: Callable[[list[Any], Timings], BatchResult] = (
            self._execute_each if instance.takes_requests else self._execute_concat
        )
        # An instance whose answers are read on the loop: batches are handed over from the
        # loop when that cannot wait (else from the thread, which never waits for answers),
        # and reported when their answer comes. `_unsent` counts the batches on their way
        # through the thread: one goes from the loop only when there are none, so that
        # batches reach the instance in the order they were handed over.
        self._on_loop = instance.answers_on_loop and instance.takes_requests and ticket is None
        self._send_lock = threading.Lock()
        self._unsent = 0
        self._answered_ns = 0  # when the last answer came: the next batch's start
        if self._on_loop:
            instance.attach(loop, self._answered)
        # CPU time per batch size, observed on the loop (scheduler._finish) from the timings.
        self.cpu = ExecTimeEstimator()
        # Batches, and None to stop; a rate-limited worker's also get release marks (int).
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Chosen once: without rate limiting the batch loop has nothing more to do.
        run = self._run if ticket is None else self._run_limited
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def submit(self, batch: list[Any], items: int) -> tuple[Outcome, Timings] | None:
        """Run `batch` (of `items` in all); never called while a batch is running. A batch
        run on the loop returns its outcome, for the caller to report; one handed to the
        instance thread returns None and is reported through `finish`."""
        if self._on_loop:
            if not self._send_now(batch):
                self._jobs.put(batch)
            return None
        if self._inline_max_ns and 0 < self.cpu(items) <= self._inline_max_ns:
            if self.instance.runs_on_any_thread:  # an instance may take that back
                ran = self._run_batch(batch)
                if self.instance.inline_until_slow:
                    self._judge_inline(ran[1])
                return ran
            self._inline_max_ns = 0
        self._jobs.put(batch)
        return None

    def _judge_inline(self, timings: Timings) -> None:
        """An instance whose batches may wait: it leaves the loop for good once several of
        its last batches there held the loop too long (one alone may have been preempted)."""
        record = self._inline_slow
        if len(record) == _JUDGED:
            self._inline_slow_count -= record[0]  # about to drop out
        slow = timings.total_ns > _SLOW * self._inline_max_ns
        record.append(slow)
        self._inline_slow_count += slow
        if self._inline_slow_count >= _SLOW_BATCHES:
            log.warning(
                "model instance %s: %d of its last %d batches on the event loop took more than "
                "%.1f ms; its batches run on its own thread from now on",
                self._thread.name,
                _SLOW_BATCHES,
                len(self._inline_slow),
                _SLOW * self._inline_max_ns / 1e6,
            )
            self._inline_max_ns = 0

    def submit_next(self, batch: list[Any]) -> Ahead | Begun:
        """Queue `batch` behind the running one, on the instance thread: the thread starts it
        as soon as it has handed the running one's results to the loop. An attached instance
        is handed it now when that cannot wait (Begun: the instance has it). An Ahead may
        still be taken back (take_back())."""
        if self._on_loop and self._send_now(batch):
            return Begun(batch)
        ahead = Ahead(batch)
        self._jobs.put(ahead)
        return ahead

    def take_back(self, ahead: Ahead) -> bool:
        """Take back a batch queued by submit_next() that the thread has not started (the
        thread then skips it); False when it has."""
        if not ahead.claim():
            return False
        if self._on_loop:
            with self._send_lock:
                self._unsent -= 1
        return True

    def _send_now(self, batch: list[Any]) -> bool:
        """On the loop: hand `batch` to the attached instance here when none is on its way
        through the thread and the instance can take it without waiting. False: the caller
        queues it for the thread."""
        with self._send_lock:
            if not self._unsent:
                sent = Sent(batch, Timings(time.monotonic_ns()))
                requests = [instance_request(item) for item in batch]
                try:
                    if self.instance.begin_requests(requests, sent, early=True):
                        return True
                except Exception:  # the thread's path fails the batch with it
                    pass
            self._unsent += 1
        return False

    def _send(self, batch: list[Any]) -> None:
        """On the thread: hand `batch` to the attached instance (which may start its process
        again first); a failure to is the batch's outcome."""
        sent = Sent(batch, Timings(time.monotonic_ns()))
        try:
            self.instance.begin_requests([instance_request(item) for item in batch], sent)
        except BaseException as exc:
            self._report(self._answered, sent, exc)
        finally:
            with self._send_lock:
                self._unsent -= 1

    def _answered(self, sent: Sent, outcome: list[RequestOutcome] | BaseException) -> None:
        """On the loop: an attached instance's answer to a batch, reported."""
        now = time.monotonic_ns()
        timings = sent.timings
        # It ran from when it was sent, or from the answer before it if it waited for that.
        timings.infer_ns = now - max(timings.dispatched_ns, self._answered_ns)
        self._answered_ns = now
        result: Outcome
        try:
            result = (
                outcome
                if isinstance(outcome, BaseException)
                else self._results(outcome, len(sent.batch))
            )
        except BaseException as exc:
            result = exc
        self._finish(self, sent.batch, result, timings)

    def _report(self, callback: Callable[..., None], *args: Any) -> bool:
        """Call back on the loop; False when the loop is gone (process exit)."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False
        return True

    def stop(self) -> None:
        """Close the instance on its own thread, then end the thread (blocking: call off-loop)."""
        self._jobs.put(None)
        self._thread.join()
        if self._ticket is not None:
            self._ticket.limiter.deregister([self._ticket])

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if isinstance(job, Ahead):
                if not job.claim():
                    continue  # taken back for an instance that fell idle first
                job = job.batch
            if self._on_loop:
                self._send(job)
                continue
            result, timings = self._run_batch(job)
            if not self._report(self._finish, self, job, result, timings):
                return  # nobody waits any more
        self._close()

    def _run_limited(self) -> None:
        """_run, each batch holding the rate limiter's resources. They are kept until the loop
        has taken the batch's results: when that hands this instance its next batch, the
        instance asks again at once and competes with the waiting ones by its new score (as
        Triton stages again an instance with more work); else the release mark frees them."""
        ticket = self._ticket
        assert ticket is not None
        limiter = ticket.limiter
        ran = 0  # batches run
        holding = False
        while (job := self._jobs.get()) is not None:
            if isinstance(job, int):  # the loop took batch `job` and gave no next one
                if holding and job == ran:
                    limiter.release(ticket)
                    holding = False
                continue
            if holding:
                limiter.requeue(ticket).wait()
            else:
                limiter.acquire(ticket)
            holding = True
            result, timings = self._run_batch(job)
            ran += 1
            if not self._report(self._finish_limited, ran, job, result, timings):
                return  # the loop is gone (process exit)
        if holding:
            limiter.release(ticket)
        self._close()

    def _finish_limited(self, ran: int, batch: list[Any], result: Outcome, t: Timings) -> None:
        """On the loop: report the batch, then mark that its resources may go (a no-op on the
        instance thread when the report handed it a next batch meanwhile)."""
        try:
            self._finish(self, batch, result, t)
        finally:
            self._jobs.put(ran)

    def _close(self) -> None:
        try:
            self.instance.close()
        except Exception:
            log.exception("closing model instance %s failed", self._thread.name)

    def _run_batch(self, batch: list[Any]) -> tuple[Outcome, Timings]:
        timings = Timings(dispatched_ns=time.monotonic_ns())
        cpu_start = time.thread_time_ns()
        result: Outcome
        try:
            result = self._execute(batch, timings)
        except BaseException as exc:  # reported per request; the thread lives on
            result = exc
        timings.cpu_ns = time.thread_time_ns() - cpu_start
        return result, timings

    def _execute_concat(
        self, batch: list[BatchItem], timings: Timings
    ) -> list[dict[str, np.ndarray]]:
        start = time.perf_counter_ns()
        layout = self._layout
        requests = [p.inputs for p in batch]
        inputs = concat_inputs(requests) if layout is None else layout.join(requests)
        infer_start = time.perf_counter_ns()
        outputs = self.instance.execute(inputs)
        infer_end = time.perf_counter_ns()
        sizes = [p.batch_size for p in batch]
        if layout is None:
            per_request = split_outputs(outputs, sizes)
        else:
            per_request = layout.split(outputs, requests, sizes)
        timings.input_ns = infer_start - start
        timings.infer_ns = infer_end - infer_start
        timings.output_ns = time.perf_counter_ns() - infer_end
        return per_request

    def _execute_each(self, batch: list[BatchItem], timings: Timings) -> BatchResult:
        start = time.perf_counter_ns()
        requests = [instance_request(item) for item in batch]
        infer_start = time.perf_counter_ns()
        results = self.instance.execute_requests(requests)
        infer_end = time.perf_counter_ns()
        timings.input_ns = infer_start - start
        timings.infer_ns = infer_end - infer_start
        timings.output_ns = time.perf_counter_ns() - infer_end
        return self._results(results, len(batch))

    def _results(self, results: list[RequestOutcome], requests: int) -> BatchResult:
        if len(results) != requests:
            raise internal(
                f"model instance {self._thread.name} returned {len(results)} results for "
                f"{requests} requests"
            )
        if any(isinstance(result, BaseException) for result in results):
            return PerRequestOutcome(results)
        return cast(list[dict[str, np.ndarray]], results)


def instance_request(item: BatchItem) -> InstanceRequest:
    """What an instance that takes requests one by one sees of a queued request."""
    request = item.request
    if request is None:  # submitted without it: tensors only, every output, no id
        return InstanceRequest(item.inputs)
    outputs = None if request.outputs is None else tuple(o.name for o in request.outputs)
    # A decoupled model's requests carry their response stream (batching/decoupled.py).
    responses = getattr(request, "responses", None)
    return InstanceRequest(
        item.inputs,
        request.id,
        request.parameters,
        outputs,
        responses,
        request.trace,
        request.input_parameters,
        request.headers,
    )
