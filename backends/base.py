"""The backend plug-in contract: complete a config, create instances that execute batches."""

from __future__ import annotations

import asyncio
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from inferd.backends.gpu import GpuInfo
from inferd.backends.pinned_memory import PinnedMemoryPool
from inferd.backends.python_metrics import CustomMetrics
from inferd.repository.config import ModelConfig, ModelConfigProto, OutputOrder
from inferd.server.errors import ErrorCode, InferdError
from inferd.server.model_calls import AnswerStream
from inferd.server.types import InferRequest, InferResponse, ParamValue

if TYPE_CHECKING:
    from inferd.server.tracing import Trace


@dataclass(frozen=True, slots=True)
class Device:
    kind: str  # "cpu" | "gpu" | "model" (KIND_MODEL: the model picks its devices)
    index: int = 0
    # The instance's name as Triton gives it, "<instance group>_<n>" (the loader fills it in);
    # a label only, so not part of equality.
    name: str = field(default="", compare=False)
    # Its group is `passive`: the instance is created (and warmed up) but takes no requests.
    passive: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        return f"gpu:{self.index}" if self.kind == "gpu" else self.kind


class ModelCalls(Protocol):
    """How model code calls other models of this server (Triton's BLS)."""

    def infer(self, request: InferRequest) -> InferResponse:
        """Blocking, from an instance thread."""

    async def infer_async(self, request: InferRequest) -> InferResponse:
        """From a coroutine on an instance's own event loop."""

    def stream(self, request: InferRequest) -> AnswerStream:
        """A call whose answers stream (decoupled BLS); returns at once, from any thread."""

    # Model control from model code (Triton's pb_utils.load_model & co.), from an instance
    # thread. With `wait`, load and unload block until done and raise InferdError when they
    # fail; without, they return at once and a failure is logged.
    def load(
        self,
        name: str,
        config: str | None,
        files: Mapping[str, bytes],
        wait: bool = True,
        requested_by: str = "",
    ) -> None: ...

    def unload(self, name: str, unload_dependents: bool = False, wait: bool = True) -> None: ...

    def ready(self, name: str, version: str = "") -> bool:
        """Whether the model (version) serves; InferdError for a malformed version."""


# A call's answer as infer_now() hands it over: the response, or why the call failed.
OnAnswer = Callable[["InferResponse | BaseException"], None]


class ServerModelCalls(ModelCalls, Protocol):
    """The server's end of model calls, which stub processes' calls reach."""

    def infer_now(self, request: InferRequest, answer: OnAnswer) -> None:
        """On the server's event loop: the call is submitted at once, and `answer` gets its
        outcome there as the called model's scheduler resolves it (no task, no thread)."""


# Where python model instances run: "thread" (in the server's process) or "process" (a stub
# process each, as in Triton). Here, not in the server's settings, so that a stub process
# starts without importing the server's front doors.
PYTHON_ISOLATIONS = ("thread", "process")


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """Server-wide knobs a backend may read (Triton's --backend-config and friends)."""

    default_max_batch_size: int = 4
    auto_complete: bool = True
    total_cpu_instances: int = 1  # CPU instances of this model, to share threads among them
    cache_dir: Path = field(default_factory=lambda: default_cache_dir(os.environ))
    # None where models cannot call models (tests of one backend, tools).
    model_calls: ServerModelCalls | None = field(default=None, compare=False)
    # Where python models' custom metrics go (exported by the server); None: kept unexported.
    custom_metrics: CustomMetrics | None = field(default=None, compare=False)
    # The server's pinned host memory budget, shared by its GPU instances' staging buffers.
    pinned_memory: PinnedMemoryPool = field(default_factory=PinnedMemoryPool, compare=False)
    # Where python model instances run: PYTHON_ISOLATIONS; a model's parameter may choose
    # (python_process.py).
    python_isolation: str = "thread"
    # The inline budget (µs) of python models whose config sets none ("": none; such models
    # run on their threads): the config gets it as its parameter (backends/python.py).
    python_inline_us: str = ""
    # The same for MLServer models: "process" runs each in a stub of its own, as MLServer
    # runs its inference workers; `mlserver_workers` stubs each, as MLServer's
    # parallel_workers each serve every model.
    mlserver_isolation: str = "thread"
    mlserver_workers: int = 1
    # Where MLServer models in stub processes keep their own metrics (backends/mlserver.py).
    mlserver_metrics_dir: Path | None = None


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where backends keep what they build (e.g. TensorRT engines): the XDG cache folder, or
    the temporary folder for a user without a home (containers run with any uid)."""
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "inferd"
    if environ.get("HOME"):
        return Path(environ["HOME"]) / ".cache" / "inferd"
    return Path(tempfile.gettempdir()) / "inferd-cache"


class ResponseSink(Protocol):
    """Where the responses of a request to a decoupled model go, from any thread, in send
    order (batching/decoupled.py's ResponseStream)."""

    @property
    def cancelled(self) -> bool:
        """The client went away."""

    @property
    def closed(self) -> bool:
        """The final response was sent: nothing more may be."""

    @property
    def holds_back(self) -> bool:
        """Whether send() may wait (back-pressure from the ensemble steps after the model)."""

    def send(self, item: dict[str, np.ndarray] | InferdError | None, final: bool) -> bool:
        """Outputs, an error, or None with `final` (the final flag alone). False when the
        request's final response was sent already (nothing is sent)."""

    def seal(self) -> None:
        """Refuse further sends."""


@dataclass(frozen=True, slots=True)
class InstanceRequest:
    """One request as an instance that takes requests one by one sees it."""

    inputs: Mapping[str, np.ndarray]  # this request's own tensors, its own batch dim included
    id: str = ""
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    outputs: tuple[str, ...] | None = None  # the outputs the client asked for; None = all
    # Decoupled models only: where this request's 0..n responses go.
    responses: ResponseSink | None = None
    # The request's trace when the trace extension sampled it: a python model hands it on to
    # its BLS calls (`trace=request.trace()`), which are then traced as its children.
    trace: Trace | None = None
    # Each input's own parameters (InferRequest.input_parameters).
    input_parameters: Mapping[str, Mapping[str, ParamValue]] = field(default_factory=dict)
    headers: Mapping[str, str] | None = None  # InferRequest.headers


class OutputsWithParameters(dict[str, np.ndarray]):
    """A request's outputs with the response parameters its model set (a python model's
    `InferenceResponse(..., parameters=...)`), each output's own (an MLServer model's
    `content_type`), and the headers of the answer (an MLServer model's): they reach the
    client's response. A dict, so that every path that carries outputs carries these
    unchanged."""

    __slots__ = ("headers", "output_parameters", "parameters")

    def __init__(
        self,
        outputs: Mapping[str, np.ndarray],
        parameters: Mapping[str, ParamValue],
        output_parameters: Mapping[str, Mapping[str, ParamValue]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(outputs)
        self.parameters = dict(parameters)
        self.output_parameters = {k: dict(v) for k, v in (output_parameters or {}).items()}
        self.headers = None if headers is None else dict(headers)

    def around(self, outputs: Mapping[str, Any]) -> OutputsWithParameters:
        """The same parameters with other outputs (the same ones packed, or some rows)."""
        return OutputsWithParameters(outputs, self.parameters, self.output_parameters, self.headers)


# A request's outcome from execute_requests(): its outputs, or why it alone failed (an
# InferdError carries the code the client sees; any other exception is an internal error).
RequestOutcome = dict[str, np.ndarray] | Exception
# deliver(job, outcomes or the error that failed the whole batch): an attached instance's
# answer, on the loop (ModelInstance.attach).
Deliver = Callable[[Any, "list[RequestOutcome] | BaseException"], None]


class Rescheduled(InferdError):
    """A request's outcome when the model wants to run it again in a later batch (Triton's
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE). Only the sequence batcher of an iterative
    sequence model takes it so; any other scheduler answers it as the error it is, in
    Triton's words."""

    def __init__(self) -> None:
        super().__init__(
            ErrorCode.INTERNAL,
            "Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the model "
            "is not configured to handle such a flag.",
        )


class ModelInstance(ABC):
    """One copy of one model version on one device.

    Every method is called from the instance's own thread, never concurrently; concurrency
    comes from more instances. Framework calls should release the GIL.
    """

    # True when execute() may also run on the event loop's thread (no thread-bound state such
    # as a CUDA stream): batches that take less CPU than a thread hop then run there. An
    # instance may turn it off for good (a python model that called the server).
    runs_on_any_thread: bool = False
    # True when a batch that computes little may still wait long (sleep, I/O: a python
    # model's): one that runs on the loop's thread for longer than a few times the inline
    # budget sends this instance's batches back to its thread for good.
    inline_until_slow: bool = False
    # True when a batch goes to execute_requests() as its requests, each with its own tensors,
    # id and parameters, instead of to execute() concatenated (Triton's python backend hands
    # a model the request list). The worker picks the path once, at start; execute() still
    # serves single requests (warmup).
    takes_requests: bool = False
    # True when the model runs elsewhere (a stub process) and its answers can be read on the
    # event loop: once attach()ed, the worker hands batches over with begin_requests() and
    # its thread never waits for them. execute() and execute_requests() serve an instance
    # that is not attached (warmup, rate-limited instances).
    answers_on_loop: bool = False

    @abstractmethod
    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batching models get inputs already concatenated along the batch dim and return
        outputs with that leading dim; non-batching models get one request's tensors."""

    def execute_requests(self, requests: Sequence[InstanceRequest]) -> list[RequestOutcome]:
        """One outcome per request, in order (only called when `takes_requests`). Raising
        fails every request of the batch with that error."""
        raise NotImplementedError(f"{type(self).__name__} does not take requests one by one")

    def attach(self, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        """From now on (only when `answers_on_loop`), each batch's outcomes are read on
        `loop` and given to deliver(job, outcomes or the error that failed the batch), in
        the order the batches were handed over. Any thread."""
        raise NotImplementedError(f"{type(self).__name__} does not answer on the loop")

    def begin_requests(
        self, requests: Sequence[InstanceRequest], job: Any, early: bool = False
    ) -> bool:
        """Hand a batch over to an attached instance, after every batch handed over before
        it; deliver() gets its outcomes with `job`. On the instance's thread; early = on the
        loop's: it must not wait, and returns False to decline (the batch then goes the
        usual way, on the instance's thread)."""
        raise NotImplementedError(f"{type(self).__name__} does not answer on the loop")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the framework session and its memory."""


def execute_one(instance: ModelInstance, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """execute() of an instance that takes requests: one request (warmup), its outputs or its
    error raised."""
    outcome = instance.execute_requests([InstanceRequest(inputs)])[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class Backend(ABC):
    """A framework adapter, found by name (config `backend:`) or platform (config `platform:`)."""

    name: ClassVar[str]
    platforms: ClassVar[tuple[str, ...]] = ()
    default_model_filename: ClassVar[str]
    # The order its answers list outputs in: that of the Triton backend it stands for.
    output_order: ClassVar[OutputOrder] = OutputOrder.CONFIG

    @classmethod
    def model_filename(cls, config: ModelConfigProto) -> str:
        """The model file in each version folder: the config's default_model_filename, else
        the backend's default (which a backend may derive from the config)."""
        return config.default_model_filename or cls.default_model_filename

    @classmethod
    def schemaless(cls, config: ModelConfigProto) -> bool:
        """Whether the model takes and answers tensors its config does not declare. Default:
        no, the config lists them all."""
        return False

    @classmethod
    def complete_config(
        cls, config: ModelConfigProto, model_path: Path, settings: BackendSettings
    ) -> None:
        """Fill in what the model file tells (inputs, outputs, max_batch_size), and check
        that what the config says agrees with the model. Default: nothing to infer."""
        return

    @classmethod
    def gpu_unavailable_reason(cls, gpus: GpuInfo) -> str:
        """Why this backend cannot run KIND_GPU instances in this process ('' = it can).
        Asked only when GPUs are present; it must be cheap (no model, no device work).
        A backend runs on GPUs only if it says so here, as Triton backends declare it."""
        return f"backend '{cls.name}' does not run on GPUs"

    @classmethod
    def creates_instances_in_parallel(cls, config: ModelConfig, settings: BackendSettings) -> bool:
        """Whether a model's instances may be created at once, on threads of their own (each
        instance's creation must then touch nothing another one does). Default: one by one."""
        return False

    @classmethod
    @abstractmethod
    def create_instance(
        cls, config: ModelConfig, model_path: Path, device: Device, settings: BackendSettings
    ) -> ModelInstance:
        """Load the model on `device`. Runs on a loader thread, never on the event loop."""
