"""The python backend: models written against Triton's python-backend API (model.py with a
TritonPythonModel class, config `backend: "python"`), run unchanged.

Triton runs every instance in a stub process of its own and hands `execute()` the list of
requests of a batch. Here every instance loads model.py as a module object of its own (no
globals shared between instances or models) and runs on its instance thread, or, with process
isolation, in a stub process of its own (python_process.py) that runs this same PythonInstance;
batches arrive request by request (`takes_requests`), each with its own tensors, id and
parameters.

GPUs: Triton runs python models on the CPU and only tells the model its device
(args["model_instance_kind"], args["model_instance_device_id"]); the model decides what to put
on that GPU. inferd does the same, so KIND_GPU (and KIND_AUTO on a GPU machine) is accepted
wherever GPUs are present.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from inferd.backends import python_api as api
from inferd.backends.base import (
    Backend,
    BackendSettings,
    Device,
    InstanceRequest,
    ModelCalls,
    ModelInstance,
    OutputsWithParameters,
    RequestOutcome,
    Rescheduled,
    ResponseSink,
    execute_one,
)
from inferd.backends.gpu import GpuInfo
from inferd.backends.python_async import ConcurrentExecutes
from inferd.backends.python_autocomplete import run_auto_complete
from inferd.backends.python_env import EXECUTION_ENV_PATH
from inferd.backends.python_env import activate as activate_env
from inferd.backends.python_metrics import CustomMetrics, MetricsHolder
from inferd.backends.python_module import (
    MODEL_CLASS,
    describe,
    load_model_module,
    model_class,
    unload_model_module,
)
from inferd.backends.python_process import StubInstance, complete_in_stub, isolation
from inferd.backends.python_sender import DiscardSink, ResponseSender, SingleResponseSender
from inferd.repository.config import (
    ModelConfig,
    ModelConfigProto,
    OutputOrder,
    TensorConfig,
    config_to_json,
)
from inferd.repository.scheduling import INLINE_PARAMETER, LATENCY_SLO_PARAMETER
from inferd.server.errors import ErrorCode, InferdError, ModelError, internal, invalid
from inferd.server.types import DataType, ParamValue

log = logging.getLogger(__name__)

# Request parameters Triton consumes itself: a model never sees them in parameters().
_RESERVED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", LATENCY_SLO_PARAMETER}
)


def to_inferd_error(error: Any) -> ModelError:
    """A model's TritonError (or anything with message()) as the error the client gets; codes
    inferd has no match for (UNKNOWN, INTERNAL) are internal errors."""
    code = error.code() if isinstance(error, api.TritonError) else api.TritonError.INTERNAL
    message = error.message() if callable(getattr(error, "message", None)) else str(error)
    return ModelError(api.ERROR_CODES.get(code, ErrorCode.INTERNAL), str(message))


class PythonBackend(Backend):
    name = "python"
    output_order = OutputOrder.RETURNED
    default_model_filename = "model.py"

    @classmethod
    def complete_config(
        cls, config: ModelConfigProto, model_path: Path, settings: BackendSettings
    ) -> None:
        if not config.platform and not config.backend:
            config.backend = "python"  # found by its model.py: the config endpoint says so
        if not config.default_model_filename:  # as Triton's python backend, even without
            config.default_model_filename = cls.default_model_filename  # auto-complete
        if settings.python_inline_us and INLINE_PARAMETER not in config.parameters:
            config.parameters[INLINE_PARAMETER].string_value = settings.python_inline_us
        model_name = config.name or model_path.parent.parent.name
        if isolation(config, model_name, settings) == "thread":
            complete_here(config, model_path, settings)
        elif settings.auto_complete:  # else the instances' stubs set up the environment
            complete_in_stub(config, model_path, settings)

    @classmethod
    def gpu_unavailable_reason(cls, gpus: GpuInfo) -> str:
        return ""  # the model itself uses the device it is told (see the module docstring)

    @classmethod
    def creates_instances_in_parallel(cls, config: ModelConfig, settings: BackendSettings) -> bool:
        # Stubs start and run initialize() each in a process of its own, as Triton's do in
        # parallel; in the server's process, models' initialize() may not expect that.
        return isolation(config.proto, config.name, settings) == "process"

    @classmethod
    def create_instance(
        cls, config: ModelConfig, model_path: Path, device: Device, settings: BackendSettings
    ) -> ModelInstance:
        if isolation(config.proto, config.name, settings) == "process":
            return StubInstance(config, model_path, device, settings)
        return PythonInstance(
            config, model_path, device, settings.model_calls, settings.custom_metrics
        )


def complete_here(
    config: ModelConfigProto, model_path: Path, settings: BackendSettings, env_first: bool = False
) -> None:
    """The environment and auto_complete_config() of a python model, in this process
    (`env_first`: a stub's, see python_env.activate)."""
    env = config.parameters.get(EXECUTION_ENV_PATH)
    if env is not None:  # before model.py is read: it may import the environment's packages
        activate_env(env.string_value, model_path.parent.parent, settings.cache_dir, env_first)
    if not settings.auto_complete:
        return
    model_name = config.name or model_path.parent.parent.name
    module = load_model_module(model_path, model_name)
    try:
        run_auto_complete(config, model_class(module, model_path), model_name, model_path)
    finally:
        unload_model_module(module)


def initialize_args(config: ModelConfig, model_file: Path, device: Device) -> dict[str, str]:
    """The `args` of TritonPythonModel.initialize(), all strings as in Triton."""
    return {
        "model_config": api.triton_json(config_to_json(config.proto)),
        "model_instance_kind": device.kind.upper(),  # CPU, GPU or MODEL, as in Triton
        "model_instance_name": device.name or f"{config.name}_0",
        "model_instance_device_id": str(device.index),
        "model_repository": str(model_file.parent.parent),
        "model_version": model_file.parent.name,
        "model_name": config.name,
    }


class PythonInstance(ModelInstance):
    """One TritonPythonModel object. Not `runs_on_any_thread` unless its config asks for it:
    model code may keep thread-bound state and take any time."""

    takes_requests = True
    inline_until_slow = True  # model code may sleep or wait for I/O at little CPU

    def __init__(
        self,
        config: ModelConfig,
        model_file: Path,
        device: Device,
        model_calls: ModelCalls | None = None,
        custom_metrics: CustomMetrics | None = None,
    ) -> None:
        self._name = config.name
        # The custom metrics this instance makes, given back when it unloads.
        self._metrics = MetricsHolder(custom_metrics or CustomMetrics())
        # Triton names the instance in a decoupled model's execution errors.
        self._instance_name = initialize_args(config, model_file, device)["model_instance_name"]
        # Chosen once: a decoupled model's requests stream their responses through senders.
        self._decoupled = config.decoupled
        # What the model's methods find of the server, made once (execute() is the hot path).
        self._bls = {
            method: api.BlsContext(model_calls, config.name, method)
            for method in ("initialize", "execute", "finalize")
            if model_calls is not None
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        sequence = config.sequence_batching
        # A decoupled model's `async def execute()` calls overlap (python_async.py), unless
        # the model is iterative: rescheduling is read when execute() has returned.
        self._overlap = self._decoupled and not (sequence is not None and sequence.iterative)
        self._concurrent: ConcurrentExecutes | None = None
        self._file = model_file
        self._model_dir = str(model_file.parent)
        self._outputs = {t.name: t for t in config.outputs}
        self._all_outputs = tuple(self._outputs)
        # Implicit state a sequence model returns: kept for the sequence batcher, whatever the
        # client asked for.
        self._state_outputs = (
            () if sequence is None else tuple(s.output_name for s in sequence.states)
        )
        self._module = load_model_module(model_file, config.name)
        if "execute" in self._bls:
            api.register_model_globals(vars(self._module), self._bls["execute"])
        step = f"{MODEL_CLASS}()"
        try:
            model = model_class(self._module, model_file)()
            initialize = getattr(model, "initialize", None)
            if initialize is not None:
                step = "initialize()"
                with self._model_context("initialize"):
                    initialize(initialize_args(config, model_file, device))
        except InferdError:
            self._release_module()
            raise
        except (Exception, SystemExit) as exc:
            self._release_module()
            raise invalid(f"{model_file}: {step} failed: {describe(exc)}") from None
        self._model: Any = model
        # Short batches may run on the event loop's thread only where the config asks for it
        # (INLINE_PARAMETER): model code may keep per-thread state, wait, or make BLS calls,
        # none of which the loop may do. Never an async or decoupled execute(): they run on
        # a loop or send from threads of their own; nor, from its first call on, one that
        # calls the server (it would wait for the loop it holds).
        self.runs_on_any_thread = (
            INLINE_PARAMETER in config.parameters
            and not self._decoupled
            and not inspect.iscoroutinefunction(model.execute)
        )

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return execute_one(self, inputs)

    def execute_requests(self, requests: Sequence[InstanceRequest]) -> list[RequestOutcome]:
        assert self._model is not None, "execute() after close()"
        batch = [self._request(r) for r in requests]
        if self._decoupled:
            return self._execute_decoupled(requests, batch)
        try:
            responses = self._run_execute(batch)
        except Exception as exc:  # fails the whole batch, as in Triton
            _close_senders(batch)
            log.warning("model '%s': execute() raised", self._name, exc_info=exc)
            why = describe(exc) + self._left_the_loop(exc)
            failure = self._execute_failure(why)
            sent = [_sent_answer(request) for request in batch]
            if all(answer is None for answer in sent):
                raise failure from None
            # But for a response already sent, which Triton delivered when it was sent.
            return [failure if answer is None else answer for answer in sent]
        if _close_senders(batch):  # the model answered some requests through their senders
            outcomes = self._sent_outcomes(requests, responses, batch)
            return _with_rescheduled(batch, outcomes)
        if not isinstance(responses, list | tuple) or len(responses) != len(requests):
            got = (
                len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            )
            raise internal(
                f"model '{self._name}': execute() must return a list of one InferenceResponse "
                f"per request ({len(requests)}), got {got}"
            )
        # A rescheduled request's place holds None (as Triton asks): it is answered later.
        return _with_rescheduled(
            batch,
            [self._outcome(resp, req) for resp, req in zip(responses, requests, strict=True)],
        )

    def _run_execute(self, batch: list[api.InferenceRequest], overlap: bool = False) -> Any:
        """execute()'s result. `async def execute()` (as Triton allows) runs to its end here,
        unless `overlap`: then its coroutine is returned, ready to run elsewhere."""
        try:
            with self._model_context("execute"):
                responses = self._model.execute(batch)
                if inspect.isawaitable(responses) and not overlap:
                    responses = self._own_loop().run_until_complete(responses)
        finally:
            if self.runs_on_any_thread and self._calls_made("execute"):
                self.runs_on_any_thread = False  # its batches stay on its thread from now on
        return responses

    def _left_the_loop(self, exc: Exception) -> str:
        """After a failure on the event loop's thread that running there caused (asyncio.run()
        or a loop of the model's own: 'cannot be called from a running event loop'), the
        instance's batches run on its own thread from now on; what to add to the error."""
        if not (
            self.runs_on_any_thread
            and isinstance(exc, RuntimeError)
            and "event loop" in str(exc)
            and _loop_running_here()
        ):
            return ""
        self.runs_on_any_thread = False
        return (
            f" (it ran on the event loop's thread, as {INLINE_PARAMETER} lets it; its batches "
            "run on its own thread from now on)"
        )

    def _calls_made(self, method: str) -> bool:
        bls = self._bls.get(method)
        return bls is not None and bls.called

    @contextmanager
    def _model_context(self, method: str) -> Iterator[None]:
        """What the model's `method` finds: the way to the server (BLS calls in execute(),
        model control in all three), its instance's custom metrics' holder."""
        bls = self._bls.get(method)
        bls_token = None if bls is None else api.BLS_CONTEXT.set(bls)
        metrics_token = api.METRICS_CONTEXT.set(self._metrics)
        dir_token = api.MODEL_DIR.set(self._model_dir)
        try:
            yield
        finally:
            api.MODEL_DIR.reset(dir_token)
            api.METRICS_CONTEXT.reset(metrics_token)
            if bls_token is not None:
                api.BLS_CONTEXT.reset(bls_token)

    async def _in_context(self, coroutine: Awaitable[Any]) -> Any:
        with self._model_context("execute"):  # the coroutine's task has a context of its own
            return await coroutine

    def _execute_decoupled(
        self, requests: Sequence[InstanceRequest], batch: list[api.InferenceRequest]
    ) -> list[RequestOutcome]:
        """Responses go out through each request's sender, now or later from any thread;
        execute() itself must return None. A failure of execute() ends every request's
        stream with that error (the scheduler reports it) and closes the senders."""
        sinks: list[ResponseSink] = []
        for request, served in zip(requests, batch, strict=True):
            sink = request.responses or DiscardSink()  # warmup requests have no client
            sinks.append(sink)
            served._response_sender = ResponseSender(partial(self._outcome, request=request), sink)
        try:
            returned = self._run_execute(batch, overlap=self._overlap)
        except Exception as exc:
            for sink in sinks:
                sink.seal()
            log.warning("model '%s': execute() raised", self._name, exc_info=exc)
            raise self._execute_failure(describe(exc)) from None
        if inspect.isawaitable(returned):  # runs on while the instance takes its next batch
            done = partial(self._overlapped_done, batch, sinks)
            self._concurrent_executes().submit(self._in_context(returned), done)
            return [{} for _ in requests]
        if returned is not None:
            for sink in sinks:
                sink.seal()
            raise self._execute_failure(self._must_return_none())
        # execute() is done: the instance is free again; a rescheduled request's stream stays
        # open for the responses of its next runs.
        return _with_rescheduled(batch, [{} for _ in requests])

    def _overlapped_done(
        self,
        batch: list[api.InferenceRequest],
        sinks: list[ResponseSink],
        future: concurrent.futures.Future[Any],
    ) -> None:
        """An overlapped execute() ended (on its loop's thread): a failure ends the streams of
        its requests that are still open; so does a request released to be rescheduled, which
        only iterative models are (and they do not overlap)."""
        try:
            message = None if future.result() is None else self._must_return_none()
        except BaseException as exc:  # cancelled too, when the instance closes
            log.warning("model '%s': execute() raised", self._name, exc_info=exc)
            message = describe(exc)
        if message is not None:
            error = self._execute_failure(message)
            for sink in sinks:
                sink.send(error, True)  # refused where the final response went already
            return
        for outcome, sink in zip(_with_rescheduled(batch, [{}] * len(batch)), sinks, strict=True):
            if isinstance(outcome, Rescheduled):
                sink.send(outcome, True)

    def _execute_failure(self, message: str) -> InferdError:
        """execute() failed: Triton's words (without the traceback it appends)."""
        return internal(
            f"Failed to process the request(s) for model '{self._instance_name}', "
            f"message: {message}"
        )

    def _must_return_none(self) -> str:
        return (
            f"Python model '{self._instance_name}' is using the decoupled mode and the "
            "execute function must return None."
        )

    def _concurrent_executes(self) -> ConcurrentExecutes:
        if self._concurrent is None:
            self._concurrent = ConcurrentExecutes(f"{self._instance_name}-async")
        return self._concurrent

    def _sent_outcomes(
        self,
        requests: Sequence[InstanceRequest],
        returned: Any,
        batch: list[api.InferenceRequest],
    ) -> list[RequestOutcome]:
        """A non-decoupled model that answered through response senders: a sent response
        wins over a returned one (as in Triton); a request with neither is an error."""
        listed = isinstance(returned, list | tuple) and len(returned) == len(requests)
        outcomes: list[RequestOutcome] = []
        for index, (request, served) in enumerate(zip(requests, batch, strict=True)):
            sent = _sent_answer(served)
            if sent is not None:
                outcomes.append(sent)
            elif listed:
                outcomes.append(self._outcome(returned[index], request))
            else:
                outcomes.append(
                    internal(f"model '{self._name}' sent no response for request {index}")
                )
        return outcomes

    def close(self) -> None:
        model, self._model = self._model, None
        try:
            finalize = getattr(model, "finalize", None)
            if finalize is not None:
                with self._model_context("finalize"):
                    finalize()
        except Exception as exc:
            raise internal(f"{self._file}: finalize() failed: {describe(exc)}") from exc
        finally:
            if self._concurrent is not None:
                self._concurrent.close()
            if self._loop is not None:
                self._loop.close()
            self._release_module()

    def _release_module(self) -> None:
        self._metrics.release()
        api.unregister_model_globals(vars(self._module))
        unload_model_module(self._module)

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop that runs this instance's `async def execute()`, on its thread (made
        on first use: most models are synchronous)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def _request(self, request: InstanceRequest) -> api.InferenceRequest:
        params = request.parameters
        correlation_id: ParamValue = 0
        flags = 0
        custom: dict[str, ParamValue] = {}
        if params:
            correlation_id = params.get("sequence_id", 0)
            if params.get("sequence_start"):
                flags |= api.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
            if params.get("sequence_end"):
                flags |= api.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
            custom = {k: v for k, v in params.items() if k not in _RESERVED_PARAMETERS}
        timeout = params.get("timeout", 0) if params else 0
        return _ServedRequest(
            self,
            request,
            model_name=self._name,
            inputs=[api.Tensor.handed_over(name, a) for name, a in request.inputs.items()],
            requested_output_names=list(request.outputs or self._all_outputs),
            correlation_id=correlation_id if isinstance(correlation_id, int | str) else 0,
            request_id=request.id,
            flags=flags,
            timeout=timeout if isinstance(timeout, int) else 0,
            parameters=custom,
            trace=None if request.trace is None else api.InferenceTrace(request.trace),
        )

    def _outcome(self, response: object, request: InstanceRequest) -> RequestOutcome:
        if not isinstance(response, api.InferenceResponse):
            return internal(
                f"model '{self._name}': execute() returned a {type(response).__name__} where an "
                "InferenceResponse belongs"
            )
        if response.has_error():
            return to_inferd_error(response.error())
        given: dict[str, np.ndarray] = {}
        for tensor in response.output_tensors():
            if not isinstance(tensor, api.Tensor):
                return internal(
                    f"model '{self._name}': an InferenceResponse holds a "
                    f"{type(tensor).__name__} where a Tensor belongs"
                )
            given[tensor.name()] = tensor.as_numpy()
        outputs: dict[str, np.ndarray] = {}
        # As Triton's python backend: the answer holds the outputs asked for (all when none
        # were) that the model returned, in the order it returned them; those it left out
        # are left out of the answer.
        wanted = request.outputs or self._outputs
        for name, array in given.items():
            if name not in wanted:
                continue
            try:
                outputs[name] = conform_output(array, self._outputs[name])
            except InferdError as exc:
                return internal(f"model '{self._name}': {exc.message}")
        for name in self._state_outputs:
            if name in given and name not in outputs:
                outputs[name] = given[name]
        parameters = api.response_parameters(response)
        return OutputsWithParameters(outputs, parameters) if parameters else outputs


def _with_rescheduled(
    batch: list[api.InferenceRequest], outcomes: list[RequestOutcome]
) -> list[RequestOutcome]:
    """The outcomes, with `Rescheduled` for the requests execute() released with
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE (whatever else it answered for them)."""
    for index, request in enumerate(batch):
        if request._release_flags == api.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            outcomes[index] = Rescheduled()
    return outcomes


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _sent_answer(request: api.InferenceRequest) -> RequestOutcome | None:
    sender = request._response_sender
    return sender.answer if isinstance(sender, SingleResponseSender) else None


def _close_senders(batch: list[api.InferenceRequest]) -> bool:
    """execute() returned: a non-decoupled model's senders take nothing more. True when the
    model asked for any."""
    used = False
    for request in batch:
        sender = request._response_sender
        if sender is not None:
            sender.close()
            used = True
    return used


class _ServedRequest(api.InferenceRequest):
    """A request handed to execute(): it has a response sender (python_sender.py)."""

    def __init__(self, instance: PythonInstance, request: InstanceRequest, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._instance = instance
        self._instance_request = request

    def is_cancelled(self) -> bool:
        """A decoupled request's client may leave while the model works on it (an iterative
        model may stop between runs); a single answer is always awaited."""
        responses = self._instance_request.responses
        return responses is not None and responses.cancelled

    def _new_response_sender(self) -> SingleResponseSender:
        # Decoupled requests get theirs up front; this is a non-decoupled model's request.
        return SingleResponseSender(
            partial(self._instance._outcome, request=self._instance_request)
        )


def conform_output(array: np.ndarray, spec: TensorConfig) -> np.ndarray:
    """The model's array for an output, as the answer carries it. As in Triton's python
    backend, it keeps its own data type where that differs from the config's (the float64 of
    np.mean over integers goes out as FP64). Bytes may come as an np.bytes_ array or as objects
    (bytes, str, or anything else, sent as its str()); an array no Triton type holds fails."""
    if array.dtype.kind in "SU":  # np.bytes_ items list as bytes, np.str_ ones as str
        return _objects(array.ravel().tolist(), array.shape)
    if array.dtype.kind == "O":
        items = array.ravel().tolist()
        if all(isinstance(item, bytes | str) for item in items):
            return array
        return _objects(
            [item if isinstance(item, bytes | str) else str(item) for item in items], array.shape
        )
    try:
        DataType.from_numpy(array.dtype)
    except KeyError:
        raise invalid(
            f"output '{spec.name}' holds numpy {array.dtype}, which no Triton data type holds "
            f"(the config declares {spec.datatype.config_name})"
        ) from None
    return array


def _objects(items: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array.reshape(shape)
