"""MLServer models (`model-settings.json`): the settings' `implementation`, an MLServer
`MLModel` (a custom one, or a runtime such as mlserver_sklearn.SKLearnModel), loaded and called
as MLServer does, from the installed `mlserver` package (the `mlserver` extra).

Each instance runs its model on an event loop of its own, on its own thread: `load()` once,
then `predict()` per batch, with a batch's requests joined into one InferenceRequest as
MLServer's adaptive batcher joins them. A request that streams its answers (REST infer_stream
or generate_stream, gRPC ModelStreamInfer) goes to `predict_stream()` when the model has its own,
and each response is sent as it comes. Tensors go in as MLServer's REST layer hands them over
(a RequestInput with a flat `data` list and the wire shape; BYTES elements as strings where they
are UTF-8) and come back through MLServer's NumpyCodec, as its REST layer would send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferd.backends.base import (
    Backend,
    BackendSettings,
    Device,
    InstanceRequest,
    ModelInstance,
    OutputsWithParameters,
    RequestOutcome,
    ResponseSink,
    execute_one,
)
from inferd.backends.mlserver_metrics import MULTIPROCESS_VARIABLE
from inferd.backends.python_env import activate
from inferd.backends.python_process import StubInstance
from inferd.backends.registry import INSTALL_HINTS
from inferd.repository.config import ModelConfig, ModelConfigProto, OutputOrder
from inferd.repository.mlserver_settings import (
    BACKEND,
    FROM_ENVIRONMENT,
    JOIN_REQUESTS,
    REPOSITORY,
    SETTINGS_FILE,
)
from inferd.server.errors import InferdError, internal, invalid, unsupported
from inferd.server.tensor_codec import object_array
from inferd.server.types import DataType

# sys.path is the process's: imports of implementations take turns.
_IMPORTS = threading.Lock()
# How often a streaming model is asked to stop for a client that left (at its next response).
_CANCEL_CHECK_S = 0.05


class MLServerBackend(Backend):
    name = BACKEND
    output_order = OutputOrder.RETURNED
    default_model_filename = SETTINGS_FILE

    @classmethod
    def schemaless(cls, config: ModelConfigProto) -> bool:
        # MLServer's metadata is optional: without it, any tensors go in and out.
        return not (config.input and config.output)

    @classmethod
    def creates_instances_in_parallel(cls, config: ModelConfig, settings: BackendSettings) -> bool:
        return settings.mlserver_isolation == "process"

    @classmethod
    def complete_config(
        cls, config: ModelConfigProto, model_path: Path, settings: BackendSettings
    ) -> None:
        # MLServer's parallel_workers each serve every model: as many stubs of each model
        # (its settings give it one instance; a config that asks for more keeps its count).
        groups = config.instance_group
        workers = settings.mlserver_workers
        if settings.mlserver_isolation == "process" and len(groups) == 1 and groups[0].count == 1:
            groups[0].count = workers

    @classmethod
    def create_instance(
        cls, config: ModelConfig, model_path: Path, device: Device, settings: BackendSettings
    ) -> ModelInstance:
        if settings.mlserver_isolation == "process":
            # A stub process of its own (python_stub.py), as MLServer runs its models in
            # inference workers: Python code in parallel with the server's, a crash that fails
            # only the model's requests, and the model's environment before the server's.
            # Its metrics (mlserver.log) go to files the server reads, as MLServer's workers'.
            folder = settings.mlserver_metrics_dir
            environment = {} if folder is None else {MULTIPROCESS_VARIABLE: str(folder)}
            return StubInstance(config, model_path, device, settings, environment)
        return MLServerInstance(config, model_path, settings.cache_dir)


class MLServerInstance(ModelInstance):
    takes_requests = True  # predict() sees a request's id, parameters and asked-for outputs

    def __init__(
        self, config: ModelConfig, settings_file: Path, cache_dir: Path, env_first: bool = False
    ) -> None:
        """`env_first` (in a stub process, which serves this model alone): the model's own
        environment comes before the server's packages."""
        _import_mlserver()
        self._model_name = config.name
        self._join = config.parameters.get(JOIN_REQUESTS) == "true"
        self._loop = asyncio.new_event_loop()
        try:
            # As `mlserver start REPOSITORY` does: the repository's folder is importable from
            # then on (a runtime module beside the model folders); MLServer adds the model's
            # own folder while it imports the implementation.
            with _IMPORTS:
                root = config.parameters.get(REPOSITORY) or str(settings_file.parent.parent)
                if root not in sys.path:
                    sys.path.insert(0, root)
                settings = _model_settings(config, settings_file)
                settings.name = config.name
                _add_environment(settings, cache_dir, env_first)
                implementation = settings.implementation
            self._settings = settings
            with self._context():
                self._model = implementation(settings)
            # MLModel's own predict_stream() is predict() of the one request: a streamed
            # request then goes with the others (joined by adaptive batching, as in MLServer).
            self._streams = _overrides_predict_stream(implementation)
            loaded = self._run(self._model.load())
        except Exception as exc:
            self._loop.close()
            raise invalid(f"failed to load model '{config.name}': {_describe(exc)}") from None
        if loaded is False:
            self._loop.close()
            raise invalid(f"failed to load model '{config.name}': its load() returned False")
        self._model.ready = True

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return execute_one(self, inputs)

    def execute_requests(self, requests: Sequence[InstanceRequest]) -> list[RequestOutcome]:
        """A request that streams its answers (infer_stream, gRPC ModelStreamInfer) goes to
        predict_stream() alone when the model has its own; any other to predict()."""
        if all(request.responses is None for request in requests):
            return self._predict_all(requests)
        outcomes: dict[int, RequestOutcome] = {}
        rest: list[int] = []
        for index, request in enumerate(requests):
            if request.responses is not None and self._streams:
                outcomes[index] = self._predict_stream(request, request.responses)
            else:
                rest.append(index)
        answered = self._predict_all([requests[index] for index in rest]) if rest else []
        for index, outcome in zip(rest, answered, strict=True):
            sink = requests[index].responses
            if sink is not None and not isinstance(outcome, Exception):
                sink.send(outcome, True)  # predict()'s answer is the stream's one response
                outcome = {}
            outcomes[index] = outcome  # a failure ends the stream (the scheduler's settle)
        return [outcomes[index] for index in range(len(requests))]

    def _predict_all(self, requests: Sequence[InstanceRequest]) -> list[RequestOutcome]:
        """With adaptive batching, one predict() per batch: a lone request as it came (id,
        parameters, the outputs it asked for), several joined on their first dim, as MLServer's
        adaptive batcher joins them (with the first one's parameters), and their rows split
        back. Without, one predict() per request, each failing on its own."""
        if not self._join:
            return [self._each(request) for request in requests]
        first = requests[0]
        if len(requests) == 1:
            return [self._predict(first, first.inputs, first.id, first.outputs)]
        rows = [len(next(iter(r.inputs.values()))) for r in requests]
        joined = {name: np.concatenate([r.inputs[name] for r in requests]) for name in first.inputs}
        answered = self._predict(first, joined, "", None)
        for name, array in answered.items():
            if array.ndim == 0 or len(array) != sum(rows):
                raise internal(
                    f"model '{self._model_name}' answered output '{name}' with shape "
                    f"{list(array.shape)} for a batch of {sum(rows)} rows"
                )
        bounds = np.cumsum(rows)[:-1]
        parts = {name: np.split(array, bounds) for name, array in answered.items()}
        return [
            answered.around({name: split[i] for name, split in parts.items()})
            for i in range(len(requests))
        ]

    def _each(self, request: InstanceRequest) -> RequestOutcome:
        try:
            return self._predict(request, request.inputs, request.id, request.outputs)
        except Exception as exc:
            return exc

    def _predict_stream(self, request: InstanceRequest, sink: ResponseSink) -> RequestOutcome:
        """predict_stream() of the request alone, as MLServer's infer_stream calls it: each
        response goes out as it comes; a failure ends the stream after those sent. A client
        that leaves stops the model at its next response."""
        payload = self._payload(request, request.inputs, request.id, request.outputs)

        async def payloads() -> AsyncIterator[Any]:
            yield payload

        async def respond() -> None:
            responses = self._model.predict_stream(payloads())
            asked = time.monotonic()
            try:
                async for response in responses:
                    sink.send(self._outputs(response), False)
                    # Asked now and then: in a stub process, asking is a trip to the server.
                    if time.monotonic() - asked >= _CANCEL_CHECK_S:
                        if sink.cancelled:
                            break
                        asked = time.monotonic()
            finally:
                close = getattr(responses, "aclose", None)  # an async generator's
                if close is not None:
                    await close()

        try:
            self._run(respond())
        except InferdError as error:
            sink.send(error, True)
        except Exception as exc:
            sink.send(self._failure(exc), True)
        else:
            sink.send(None, True)
        return {}

    def _predict(
        self,
        like: InstanceRequest,
        inputs: Mapping[str, np.ndarray],
        request_id: str,
        outputs: tuple[str, ...] | None,
    ) -> OutputsWithParameters:
        """predict() of `inputs`, with the parameters (its own and its inputs') of `like`."""
        request = self._payload(like, inputs, request_id, outputs)
        try:
            response = self._run(self._model.predict(request))
        except Exception as exc:
            raise self._failure(exc) from None
        return self._outputs(response)

    def _payload(
        self,
        like: InstanceRequest,
        inputs: Mapping[str, np.ndarray],
        request_id: str,
        outputs: tuple[str, ...] | None,
    ) -> Any:
        """MLServer's InferenceRequest of `inputs`, with the parameters (its own and its
        inputs') of `like`."""
        from mlserver.types import InferenceRequest, Parameters, RequestInput, RequestOutput

        own = like.input_parameters
        # As MLServer hands them over: the request's headers (or gRPC metadata) in its
        # parameters, which it always has then.
        given: dict[str, Any] = dict(like.parameters)
        if like.headers is not None:
            given["headers"] = dict(like.headers)
        return InferenceRequest(
            id=request_id or None,
            parameters=Parameters(**given) if given else None,
            inputs=[
                RequestInput(
                    name=name,
                    shape=list(array.shape),
                    datatype=DataType.from_numpy(array.dtype).value,
                    data=_wire_data(array),
                    parameters=Parameters(**own[name]) if name in own else None,
                )
                for name, array in inputs.items()
            ],
            outputs=[RequestOutput(name=name) for name in outputs] if outputs else None,
        )

    def _failure(self, exc: Exception) -> InferdError:
        # MLServer's errors carry the HTTP status they answer with (InferenceError: 400).
        status = getattr(exc, "status_code", 500)
        failed = invalid if isinstance(status, int) and 400 <= status < 500 else internal
        return failed(f"model '{self._model_name}' failed: {_describe(exc)}")

    def _outputs(self, response: Any) -> OutputsWithParameters:
        """An InferenceResponse's outputs as arrays, with its scalar parameters and its
        outputs' (the content_type of MLServer's codecs, which its clients decode by)."""
        from mlserver.codecs import NumpyCodec

        try:
            answered = {output.name: _array(NumpyCodec, output) for output in response.outputs}
            own = {output.name: _scalars(output.parameters) for output in response.outputs}
            given = _scalars(response.parameters)
            headers = response.parameters.headers if response.parameters else None
        except Exception as exc:
            raise internal(
                f"model '{self._model_name}' answered what is not an InferenceResponse's "
                f"outputs: {_describe(exc)}"
            ) from None
        # The answer's headers, as MLServer's REST layer sends them.
        sent = {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else None
        return OutputsWithParameters(answered, given, {k: v for k, v in own.items() if v}, sent)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a model's unload() failing must not stop ours
            self._run(self._model.unload())
        self._loop.close()

    def _run(self, coroutine: Any) -> Any:
        """A coroutine of the model's, run in its context, as MLServer runs load(), predict()
        and unload(): mlserver.log() and register() and MLServer's log records name it."""
        with self._context():  # the task takes a copy of this thread's context
            return self._loop.run_until_complete(coroutine)

    def _context(self) -> contextlib.AbstractContextManager[None]:
        from mlserver.context import model_context

        return model_context(self._settings)  # type: ignore[no-any-return]


def _scalars(parameters: Any) -> dict[str, bool | int | float | str]:
    """MLServer's Parameters as the wire carries them: its scalar values."""
    given = parameters.model_dump(exclude_none=True) if parameters else {}
    return {k: v for k, v in given.items() if isinstance(v, bool | int | float | str)}


def _overrides_predict_stream(implementation: type) -> bool:
    from mlserver import MLModel

    return getattr(implementation, "predict_stream", None) is not MLModel.predict_stream


def _model_settings(config: ModelConfig, settings_file: Path) -> Any:
    """MLServer's settings object for the model: read from its file, or made from the
    MLSERVER_MODEL_* variables as MLServer makes it when its repository declares no model."""
    if config.parameters.get(FROM_ENVIRONMENT) == "true":
        from mlserver.settings import ModelParameters, ModelSettings

        settings = ModelSettings()
        settings.parameters = ModelParameters()
        return settings
    from mlserver.repository.load import load_model_settings

    return load_model_settings(str(settings_file))


def _add_environment(settings: Any, cache_dir: Path, first: bool) -> None:
    """A model's own environment (`environment_path`, else `environment_tarball`: a conda-pack
    archive, unpacked once into the cache), found as MLServer finds it. MLServer runs such a
    model in worker processes on that environment's Python; here its packages join the import
    path, as for python models' EXECUTION_ENV_PATH (python_env.py): after the server's, so the
    model finds there what the server lacks, or `first` in a stub process. The environment
    must be for the server's Python version."""
    parameters = settings.parameters
    if parameters is None:
        return
    if parameters.environment_path:
        label = "environment_path"
        where = os.path.abspath(os.path.expanduser(os.path.expandvars(parameters.environment_path)))
    elif parameters.environment_tarball:
        from mlserver.utils import to_absolute_path

        label = "environment_tarball"
        where = os.path.abspath(to_absolute_path(settings, parameters.environment_tarball))
    else:
        return
    activate(where, Path(where).parent, cache_dir, first, label)


def _import_mlserver() -> None:
    """Import mlserver beside tritonclient. Both carry the KServe v2 protocol's gRPC messages
    in the protobuf package `inference` (Triton's are a superset), and protobuf's pool takes
    each symbol from one file only: mlserver is given tritonclient's module for its own (inferd
    never starts mlserver's servers)."""
    if "mlserver.grpc.dataplane_pb2" not in sys.modules:
        from tritonclient.grpc import service_pb2

        sys.modules["mlserver.grpc.dataplane_pb2"] = service_pb2
    try:
        import mlserver  # noqa: F401
    except ImportError as exc:
        hint = INSTALL_HINTS["mlserver"]
        raise unsupported(f"MLServer is not installed ({exc}); {hint}") from None


def _wire_data(array: np.ndarray) -> list[Any]:
    """A tensor's `data` as MLServer's REST layer builds it from JSON: flat, BYTES elements as
    strings (as bytes where they are not UTF-8)."""
    if array.dtype != object:
        return array.ravel().tolist()
    return [_text(item) for item in array.ravel().tolist()]


def _array(codec: Any, output: Any) -> np.ndarray:
    """An output as the wire would carry it: MLServer's own decoding, except for BYTES, which
    it reads as fixed-width characters; here each element is one item of `data` (or, from
    NumpyCodec's fixed-width arrays, one equal slice of a single buffer)."""
    shape = tuple(output.shape)
    if output.datatype != "BYTES":
        array: np.ndarray = codec.decode_output(output).reshape(shape)
        return array
    items = list(getattr(output.data, "root", output.data))
    count = int(np.prod(shape))
    if len(items) == 1 and count > 1 and isinstance(items[0], bytes):
        width = len(items[0]) // count
        items = [items[0][i * width : (i + 1) * width] for i in range(count)]
    elements = [item.encode() if isinstance(item, str) else bytes(item) for item in items]
    return object_array(elements).reshape(shape)


def _text(item: object) -> object:
    if isinstance(item, bytes):
        try:
            return item.decode()
        except UnicodeDecodeError:
            return item
    return item


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InferdError):  # inferd's own words (a model's environment)
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
