"""Running an ensemble request, in the protocol-neutral core: each step becomes an ordinary
request to its composing model, submitted through the core like any other (so the composing
model's scheduler batches it with other requests, ensemble or not), as soon as the tensors it
reads are there. Steps that do not wait for each other run at the same time.

An ensemble with a decoupled step is decoupled too, as in Triton: each response of that step
runs the steps after it once, and makes one response of the ensemble (repository/ensemble_graph
checks at load that the steps allow it).

Everything here runs on the event loop: steps are started from the callbacks with which the
composing models' schedulers answer, with no task per request or per step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from inferd.batching.decoupled import OnResponse, SendCredits, StreamItem
from inferd.batching.scheduler import OnDone, Outputs, resolve
from inferd.batching.stats import BatchStats
from inferd.repository.ensemble_graph import EnsembleGraph, Plan, Progress
from inferd.repository.versions import ModelVersion
from inferd.server.errors import ErrorCode, InferdError, internal
from inferd.server.types import (
    Cancel,
    ComputeTimes,
    InferRequest,
    InferResponse,
    OnStreamResponse,
    RequestedOutput,
)

log = logging.getLogger(__name__)

# The core's model lookup (name, version, the ensemble's namespace -> ready version), its
# submit() and its stream().
Resolve = Callable[[str, str, str], ModelVersion]
Submit = Callable[
    [InferRequest, ModelVersion, OnDone], tuple[ModelVersion, asyncio.Future[Outputs]]
]
Stream = Callable[[InferRequest, OnStreamResponse, ModelVersion], Cancel | None]
# A tensor between steps, with the batch size it was made with (0: by a model that does not
# batch, so its first dim is no batch dim).
Tensor = tuple[np.ndarray, int]


class EnsembleRunner:
    def __init__(self, resolve: Resolve, submit: Submit, stream: Stream) -> None:
        self.resolve = resolve
        self.submit_step = submit
        self.stream_step = stream

    def submit(
        self, request: InferRequest, model: ModelVersion, batch_size: int, on_done: OnDone | None
    ) -> asyncio.Future[Outputs]:
        """Start a request that has been validated against the ensemble's config. Failures
        while starting raise here; later ones resolve the future (then `on_done` is called),
        never before this returns."""
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        run = _Run(self, request, model, batch_size, partial(_resolve, future, on_done))
        _start(run)
        future.add_done_callback(run.answered)
        return future

    def stream(
        self, request: InferRequest, model: ModelVersion, batch_size: int, respond: OnResponse
    ) -> Cancel:
        """A request of a decoupled ensemble: `respond(outputs or error or None, final)` once
        per response of its decoupled step (after the steps that follow it), the last with
        `final` (None: the final flag alone). Returns how to drop the request."""
        run = _Run(self, request, model, batch_size, respond, streams=True)
        _start(run)
        return run.drop


def _start(run: _Run) -> None:
    run.runtime.started()  # refused while the ensemble unloads
    try:
        run.start()
    except Exception as exc:
        run.abandon()
        raise run.failure(exc) from None


def _resolve(
    future: asyncio.Future[Outputs], on_done: OnDone | None, item: StreamItem, final: bool
) -> None:
    assert item is not None
    resolve(future, on_done, item)


class _Flow:
    """Steps of one request that share their tensors. A plain ensemble runs all its steps in
    one flow. A decoupled one runs the steps up to its decoupled step in one, then, for each
    response of that step, the steps after it in a flow of their own (a branch), which starts
    from a copy of the tensors there were, with that response's outputs added."""

    __slots__ = ("plan", "progress", "running", "tensors")

    def __init__(self, plan: Plan, graph: EnsembleGraph, tensors: dict[str, Tensor]) -> None:
        self.plan = plan
        self.tensors = tensors
        self.progress = Progress(graph, plan)
        self.running: dict[int, asyncio.Future[Outputs]] = {}


class _Run:
    """One ensemble request on its way through the steps."""

    def __init__(
        self,
        runner: EnsembleRunner,
        request: InferRequest,
        model: ModelVersion,
        batch_size: int,
        respond: OnResponse,
        streams: bool = False,
    ) -> None:
        runtime = model.ensemble
        assert runtime is not None
        self.runtime = runtime
        self._namespace = model.namespace  # where its steps' models are looked up first
        self._runner = runner
        self._request = request
        self._respond = respond
        self._batch_size = batch_size
        self._over = False
        self._started_ns = time.monotonic_ns()
        self._compute = ComputeTimes()  # the steps' compute times, summed
        requested = None if request.outputs is None else [o.name for o in request.outputs]
        plan = runtime.plan(requested)
        batch = batch_size if runtime.config.max_batch_size > 0 else 0
        tensors = {name: (array, batch) for name, array in request.inputs.items()}
        graph = runtime.graph
        self._branches: set[_Flow] = set()
        # max_inflight_requests: the places this request holds at limited steps, and its
        # launches waiting for one.
        self._held: dict[int, int] = {}
        self._waiting: list[_Waiting] = []
        self._credits: SendCredits | None = None  # the decoupled step's back-pressure
        self._owed = 0  # its responses taken in while a launch waits: credits to give back
        self._final_flag = False  # the decoupled step has sent its last response
        self._final_alone = False  # ... and its final flag came alone: so does the ensemble's
        self._drop_stream: Cancel | None = None
        step = runtime.decoupled_step
        if step is None or not streams or step not in plan.steps:
            self._decoupled: int | None = None
            self._main = _Flow(plan, graph, tensors)
            return
        # The steps up to the decoupled one; and per response, the decoupled step (as done
        # already, which starts those that read its outputs) and the steps after it.
        self._decoupled = step
        if any(runtime.limiters):  # a full step holds back the responses that feed it
            self._credits = SendCredits(1)
        needed = frozenset(plan.steps)
        self._main = _Flow(graph.subplan((graph.before(step) & needed) | {step}), graph, tensors)
        self._branch_plan = graph.subplan((graph.after(step) & needed) | {step})

    def start(self) -> None:
        for step in self._main.plan.first:
            self._launch(self._main, step)
        stats = self.runtime.stats
        queued = time.monotonic_ns() - self._started_ns
        stats.queue.add(queued)
        stats.queue_us.observe(queued / 1000)
        if self._main.progress.done:  # nothing to run (no outputs asked for): answer next turn
            asyncio.get_running_loop().call_soon(self._flow_done, self._main)

    # ---- steps -------------------------------------------------------------------------------

    def _launch(self, flow: _Flow, index: int) -> None:
        limiter = self.runtime.limiters[index]
        if limiter is None:
            self._dispatch(flow, index)
            return
        waiting = _Waiting(self, flow, index)
        if not limiter.acquire(waiting):
            self._waiting.append(waiting)
            return
        self._held[index] = self._held.get(index, 0) + 1
        self._dispatch(flow, index)

    def launch_waiting(self, waiting: _Waiting) -> None:
        """A place freed at a full step (the limiter took it for this launch)."""
        self._waiting.remove(waiting)
        index = waiting.index
        self._held[index] = self._held.get(index, 0) + 1
        try:
            self._dispatch(waiting.flow, index)
        except Exception as exc:
            self._fail(exc)
            return
        self._give_credits()

    def _give_credits(self) -> None:
        """The decoupled step may send again once nothing of this request waits for a place."""
        if self._credits is not None and self._owed and not self._waiting:
            self._credits.give(self._owed)
            self._owed = 0

    def _release(self, index: int) -> None:
        """A limited step's request is over: its place goes to the next launch waiting."""
        limiter = self.runtime.limiters[index]
        if limiter is not None and self._held.get(index):
            self._held[index] -= 1
            limiter.release()

    def _dispatch(self, flow: _Flow, index: int) -> None:
        step = self.runtime.steps[index]
        try:
            model = self._runner.resolve(step.model_name, step.version, self._namespace)
        except InferdError as exc:
            raise _StepError(index, exc) from None
        config = model.config
        assert config is not None
        batching = config.max_batch_size > 0
        inputs: dict[str, np.ndarray] = {}
        for name, tensor in step.input_map.items():
            found = flow.tensors.get(tensor)
            if found is None:  # an optional input that the request or a step left out
                continue
            spec = config.input_by_name.get(name)
            array, made_with = found
            inputs[name] = (
                array if spec is None else fit_batching(array, made_with, spec.dims, batching)
            )
        trace = self._request.trace  # a traced ensemble's steps are traced with it
        request = InferRequest(
            step.model_name,
            step.version,
            inputs,
            id=self._request.id,
            parameters=self._request.parameters,
            outputs=[RequestedOutput(name) for name in step.output_map],
            trace=None if trace is None else trace.child(step.model_name),
            compute=self._compute,
            # Its own back-pressure, or, as the decoupled step of another ensemble, that one's.
            send_credits=(self._credits or self._request.send_credits)
            if index == self._decoupled
            else None,
        )
        batch = next(iter(inputs.values())).shape[0] if batching and inputs else 0
        if index == self._decoupled:
            respond = partial(self._streamed, index, batch)
            self._drop_stream = self._runner.stream_step(request, respond, model)
            return
        try:
            _, future = self._runner.submit_step(
                request, model, partial(self._step_done, flow, index, batch)
            )
        except InferdError as exc:
            raise _StepError(index, exc) from None
        if not future.done():
            flow.running[index] = future

    def _step_done(
        self, flow: _Flow, index: int, batch: int, future: asyncio.Future[Outputs]
    ) -> None:
        flow.running.pop(index, None)
        if self._over or future.cancelled():
            return  # _end() gave back the places held
        self._release(index)
        error = future.exception()
        if error is not None:
            self._fail(_StepError(index, error))
            return
        self._finished(flow, index, future.result(), batch)

    def _finished(self, flow: _Flow, index: int, outputs: Outputs, batch: int) -> None:
        """Step `index` of `flow` answered: keep its outputs, start what may run now."""
        for name, tensor in self.runtime.steps[index].output_map.items():
            array = outputs.get(name)
            if array is not None:
                flow.tensors[tensor] = (array, batch)
        try:
            for step in flow.progress.finished(index):
                self._launch(flow, step)
        except Exception as exc:
            self._fail(exc)
            return
        if flow.progress.done:
            self._flow_done(flow)

    def _streamed(
        self, index: int, batch: int, answer: InferResponse | InferdError | None, final: bool
    ) -> None:
        """A response of the decoupled step: its own branch of the steps after it."""
        if self._over:
            return
        if isinstance(answer, InferdError):  # as Triton: the ensemble request ends with it
            self._fail(_StepError(index, answer))
            return
        self._final_flag = final
        if final:
            self._release(index)
        self._owed += 1  # the credit its send took: back once its branch is under way
        if answer is not None:
            branch = _Flow(self._branch_plan, self.runtime.graph, dict(self._main.tensors))
            self._branches.add(branch)
            outputs = {name: array for name, _, array in answer.outputs}
            self._finished(branch, index, outputs, batch)
            self._give_credits()
        elif final:
            self._final_alone = True
            if not self._branches:
                self._final_response()

    # ---- answers -----------------------------------------------------------------------------

    def _flow_done(self, flow: _Flow) -> None:
        if self._over:
            return
        if self._decoupled is None:  # a plain ensemble: its one answer
            self._answer(flow, True)
            return
        self._branches.discard(flow)  # a branch: one response of a decoupled ensemble
        last = self._final_flag and not self._branches
        self._answer(flow, last and not self._final_alone)
        if last and self._final_alone and not self._over:
            self._final_response()

    def _final_response(self) -> None:
        """The final flag alone, once every response before it has gone out."""
        self._end()
        self._count_success()
        self._respond(None, True)

    def _answer(self, flow: _Flow, final: bool) -> None:
        config = self.runtime.config
        batching = config.max_batch_size > 0
        wanted = config.outputs
        if self._request.outputs is not None:
            names = {o.name for o in self._request.outputs}
            wanted = tuple(t for t in config.outputs if t.name in names)
        outputs: Outputs = {}
        for spec in wanted:
            found = flow.tensors.get(spec.name)
            if found is not None:  # a composing model may leave it out: so does the answer
                outputs[spec.name] = fit_batching(found[0], found[1], spec.dims, batching)
        if final:
            self._end()
            self._count_success()
        self._respond(outputs, final)

    def _count_success(self) -> None:
        """As Triton counts an ensemble request: its own duration and queue time, and its
        steps' compute times summed, also under its batch size."""
        elapsed = time.monotonic_ns() - self._request.arrival_ns
        stats = self.runtime.stats
        stats.success.add(elapsed)
        stats.request_us.observe(elapsed / 1000)
        size = max(1, self._batch_size)
        stats.inference_count += size
        stats.execution_count += 1
        stats.last_inference_ms = time.time_ns() // 1_000_000
        c = self._compute
        per_size = stats.batches.get(size)
        if per_size is None:
            per_size = stats.batches[size] = BatchStats()
        for durations in (stats, per_size):
            durations.compute_input.add(c.input_ns)
            durations.compute_infer.add(c.infer_ns)
            durations.compute_output.add(c.output_ns)
        outer = self._request.compute
        if outer is not None:  # this ensemble is a step of another: its steps count there too
            outer.input_ns += c.input_ns
            outer.infer_ns += c.infer_ns
            outer.output_ns += c.output_ns

    def _fail(self, exc: BaseException) -> None:
        if self._over:
            return
        self.abandon()
        self._respond(self.failure(exc), True)

    def failure(self, exc: BaseException) -> InferdError:
        """The error the client gets: the step's own code, its message naming the ensemble
        and the step's model (Triton adds "in ensemble '<name>', ")."""
        name = self.runtime.name
        if isinstance(exc, _StepError):
            step = self.runtime.steps[exc.index]
            cause = exc.cause
            code = cause.code if isinstance(cause, InferdError) else ErrorCode.INTERNAL
            message = cause.message if isinstance(cause, InferdError) else repr(cause)
            return InferdError(
                code, f"in ensemble '{name}', step model '{step.model_name}': {message}"
            )
        if isinstance(exc, InferdError):
            return exc
        log.exception("ensemble '%s' failed", name, exc_info=exc)
        return internal(f"in ensemble '{name}', {exc!r}")

    def abandon(self) -> None:
        """The request is over without an answer: stop its steps, count the failure (as
        Triton counts an ensemble's: reason OTHER)."""
        self._end()
        self.runtime.stats.fail_request(time.monotonic_ns() - self._request.arrival_ns, "OTHER")

    def answered(self, future: asyncio.Future[Outputs]) -> None:
        """The requester went away (the front door cancelled the future): like the
        schedulers, count nothing, and drop the steps not run yet."""
        if future.cancelled():
            self.drop()

    def drop(self) -> None:
        """The client left: count nothing, stop the steps (and the decoupled step's stream)."""
        if not self._over:
            self._end()

    def _end(self) -> None:
        self._over = True
        self.runtime.finished()
        limiters = self.runtime.limiters
        for waiting in self._waiting:
            limiter = limiters[waiting.index]
            assert limiter is not None
            limiter.withdraw(waiting)
        self._waiting.clear()
        for index, held in self._held.items():
            for _ in range(held):
                limiter = limiters[index]
                assert limiter is not None
                limiter.release()
        self._held.clear()
        if self._credits is not None:
            self._credits.open()  # a model waiting to send goes on (its sends are dropped)
        flows = [self._main, *self._branches]
        self._branches.clear()
        if self._drop_stream is not None:
            self._drop_stream()
        for flow in flows:
            for step in flow.running.values():
                step.cancel()  # the schedulers drop cancelled requests before they run
            flow.running.clear()


class _Waiting:
    """A launch of a step waiting for a place (max_inflight_requests)."""

    __slots__ = ("flow", "index", "run")

    def __init__(self, run: _Run, flow: _Flow, index: int) -> None:
        self.run = run
        self.flow = flow
        self.index = index

    def __call__(self) -> None:
        self.run.launch_waiting(self)


class _StepError(Exception):
    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(index, cause)
        self.index = index
        self.cause = cause


def fit_batching(
    array: np.ndarray, batch: int, dims: tuple[int, ...], batching: bool
) -> np.ndarray:
    """A tensor made by a batching model for one that does not batch, or the other way round
    (Triton's rule): a batch of 1 loses its batch dim when the shape then fits `dims`, and a
    tensor that fits `dims` as it is gains a batch dim of 1. Else it passes unchanged."""
    if batching == (batch != 0):
        return array
    if batching:
        return array.reshape((1, *array.shape)) if _fits(dims, array.shape) else array
    if batch == 1 and not _fits(dims, array.shape):
        return array.reshape(array.shape[1:])
    return array


def _fits(dims: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return len(dims) == len(shape) and all(d in (-1, s) for d, s in zip(dims, shape, strict=True))
