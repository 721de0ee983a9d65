"""Running an ensemble request, in the protocol-neutral core: each step becomes an ordinary
request to its composing model, submitted through the core like any other (so the composing
model's scheduler batches it with other requests, ensemble or not), as soon as the tensors it
reads are there. Steps that do not wait for each other run at the same time.

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

from inferd.batching.scheduler import OnDone, Outputs, resolve
from inferd.repository.ensemble_graph import Progress
from inferd.repository.ensemble_runtime import EnsembleRuntime
from inferd.repository.versions import ModelVersion
from inferd.server.errors import ErrorCode, InferdError, internal
from inferd.server.types import InferRequest, RequestedOutput

log = logging.getLogger(__name__)

# The core's model lookup (name, version -> ready version) and its submit().
Resolve = Callable[[str, str], ModelVersion]
Submit = Callable[
    [InferRequest, ModelVersion, OnDone], tuple[ModelVersion, asyncio.Future[Outputs]]
]
# A tensor between steps, with the batch size it was made with (0: by a model that does not
# batch, so its first dim is no batch dim).
Tensor = tuple[np.ndarray, int]


class EnsembleRunner:
    def __init__(self, resolve: Resolve, submit: Submit) -> None:
        self._resolve = resolve
        self._submit = submit

    def submit(
        self, request: InferRequest, model: ModelVersion, batch_size: int, on_done: OnDone | None
    ) -> asyncio.Future[Outputs]:
        """Start a request that has been validated against the ensemble's config. Failures
        while starting raise here; later ones resolve the future (then `on_done` is called),
        never before this returns."""
        runtime = model.ensemble
        assert runtime is not None
        run = _Run(self._resolve, self._submit, request, runtime, batch_size, on_done)
        runtime.started()  # refused while the ensemble unloads
        try:
            run.start()
        except Exception as exc:
            run.abandon()
            raise run.failure(exc) from None
        return run.future


class _Run:
    """One ensemble request on its way through the steps."""

    def __init__(
        self,
        resolve: Resolve,
        submit: Submit,
        request: InferRequest,
        runtime: EnsembleRuntime,
        batch_size: int,
        on_done: OnDone | None,
    ) -> None:
        self._resolve = resolve
        self._submit = submit
        self._request = request
        self._runtime = runtime
        self._on_done = on_done
        self._batch_size = batch_size
        self.future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        requested = None if request.outputs is None else [o.name for o in request.outputs]
        self._plan = runtime.plan(requested)
        self._progress = Progress(runtime.graph, self._plan)
        self._running: dict[int, asyncio.Future[Outputs]] = {}
        self._over = False
        self._started_ns = time.monotonic_ns()
        batch = batch_size if runtime.config.max_batch_size > 0 else 0
        self._tensors: dict[str, Tensor] = {
            name: (array, batch) for name, array in request.inputs.items()
        }

    def start(self) -> None:
        for step in self._plan.first:
            self._launch(step)
        stats = self._runtime.stats
        queued = time.monotonic_ns() - self._started_ns
        stats.queue.add(queued)
        stats.queue_us.observe(queued / 1000)
        if self._progress.done:  # nothing to run (no outputs asked for): answer next turn
            self.future.get_loop().call_soon(self._finish)
        self.future.add_done_callback(self._answered)

    # ---- steps -------------------------------------------------------------------------------

    def _launch(self, index: int) -> None:
        step = self._runtime.steps[index]
        try:
            model = self._resolve(step.model_name, step.version)
        except InferdError as exc:
            raise _StepError(index, exc) from None
        config = model.config
        assert config is not None
        batching = config.max_batch_size > 0
        inputs: dict[str, np.ndarray] = {}
        for name, tensor in step.input_map.items():
            found = self._tensors.get(tensor)
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
        )
        batch = next(iter(inputs.values())).shape[0] if batching and inputs else 0
        try:
            _, future = self._submit(request, model, partial(self._step_done, index, batch))
        except InferdError as exc:
            raise _StepError(index, exc) from None
        if not future.done():
            self._running[index] = future

    def _step_done(self, index: int, batch: int, future: asyncio.Future[Outputs]) -> None:
        self._running.pop(index, None)
        if self._over or future.cancelled():
            return
        error = future.exception()
        if error is not None:
            self._fail(_StepError(index, error))
            return
        outputs = future.result()
        for name, tensor in self._runtime.steps[index].output_map.items():
            array = outputs.get(name)
            if array is not None:
                self._tensors[tensor] = (array, batch)
        try:
            for step in self._progress.finished(index):
                self._launch(step)
        except Exception as exc:
            self._fail(exc)
            return
        if self._progress.done:
            self._finish()

    # ---- the answer --------------------------------------------------------------------------

    def _finish(self) -> None:
        if self._over:
            return
        config = self._runtime.config
        batching = config.max_batch_size > 0
        wanted = config.outputs
        if self._request.outputs is not None:
            names = {o.name for o in self._request.outputs}
            wanted = tuple(t for t in config.outputs if t.name in names)
        outputs: Outputs = {}
        for spec in wanted:
            found = self._tensors.get(spec.name)
            if found is None:
                self._fail(
                    internal(
                        f"in ensemble '{config.name}', no step produced output '{spec.name}' "
                        "(a composing model left it out of its answer)"
                    )
                )
                return
            outputs[spec.name] = fit_batching(found[0], found[1], spec.dims, batching)
        self._end()
        elapsed = time.monotonic_ns() - self._request.arrival_ns
        stats = self._runtime.stats
        stats.success.add(elapsed)
        stats.request_us.observe(elapsed / 1000)
        stats.inference_count += max(1, self._batch_size)
        stats.execution_count += 1
        stats.last_inference_ms = time.time_ns() // 1_000_000
        resolve(self.future, self._on_done, outputs)

    def _fail(self, exc: BaseException) -> None:
        if self._over:
            return
        self.abandon()
        resolve(self.future, self._on_done, self.failure(exc))

    def failure(self, exc: BaseException) -> InferdError:
        """The error the client gets: the step's own code, its message naming the ensemble
        and the step's model (Triton adds "in ensemble '<name>', ")."""
        name = self._runtime.name
        if isinstance(exc, _StepError):
            step = self._runtime.steps[exc.index]
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
        self._runtime.stats.fail_request(time.monotonic_ns() - self._request.arrival_ns, "OTHER")

    def _answered(self, future: asyncio.Future[Outputs]) -> None:
        """The requester went away (the front door cancelled the future): like the
        schedulers, count nothing, and drop the steps not run yet."""
        if future.cancelled() and not self._over:
            self._end()

    def _end(self) -> None:
        self._over = True
        self._runtime.finished()
        for step in self._running.values():
            step.cancel()  # the schedulers drop cancelled requests before they run
        self._running.clear()


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
