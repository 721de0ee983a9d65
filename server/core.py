"""The protocol-neutral data plane: what HTTP and gRPC both call, so that they answer alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import inferd
from inferd.batching.decoupled import (
    OnResponse,
    StreamItem,
    StreamRequest,
    stream_request,
)
from inferd.batching.scheduler import DEFAULT_OPTIONS, OnDone, Outputs
from inferd.repository.config import ModelConfigProto, TensorConfig, config_to_json
from inferd.repository.manager import ModelRepository, ModelVersion, version_number
from inferd.server.answers import answer
from inferd.server.cached_answers import CachedAnswers
from inferd.server.ensemble import EnsembleRunner
from inferd.server.errors import (
    DecoupledRefused,
    ErrorCode,
    InferdError,
    internal,
    invalid,
    unavailable,
)
from inferd.server.log_settings import LogControl, LogSettings
from inferd.server.mlserver_envelope import MLServerEnvelope
from inferd.server.redis_cache import RedisCache
from inferd.server.request_checks import request_options, validate_request
from inferd.server.response_cache import ResponseCache
from inferd.server.shared_memory import SharedMemoryRegistry
from inferd.server.statistics import model_stats_document
from inferd.server.trace_settings import TraceSetting, TraceUpdate
from inferd.server.tracing import Tracer
from inferd.server.types import (
    Cancel,
    InferRequest,
    InferResponse,
    ModelIndexEntry,
    ModelMetadata,
    OnStreamResponse,
    RequestedOutput,
    ServerMetadata,
    TensorMetadata,
)

SERVER_NAME = "inferd"
# Only what is implemented end to end on every front door that has it; in Triton 2.51's order.
EXTENSIONS = (
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
)


@dataclass(frozen=True, slots=True)
class CoreSettings:
    strict_readiness: bool = True
    model_control_mode: str = "none"  # the repository API may load and unload in "explicit"
    server_id: str = SERVER_NAME  # --id


class InferenceCore:
    def __init__(
        self,
        repository: ModelRepository,
        settings: CoreSettings,
        shared_memory: SharedMemoryRegistry | None = None,
        response_cache: ResponseCache | RedisCache | None = None,
        log_control: LogControl | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._repository = repository
        self._settings = settings
        # Client shared-memory regions; without a registry, registration is refused.
        self.shared_memory = shared_memory or SharedMemoryRegistry(allow_client=False)
        # --cache-config: answers of models with response_cache enabled; None = no cache.
        self._cached = CachedAnswers(response_cache) if response_cache is not None else None
        # The logging extension's settings (process-wide, as in Triton).
        self.logging = log_control or LogControl(LogSettings())
        # The trace extension's settings and samplers (front doors sample, the core stamps).
        self.tracing = tracer or Tracer(TraceSetting())
        self._started = False
        # What MLServer's dataplane adds around its models' requests and answers.
        self.mlserver = MLServerEnvelope.here(settings.server_id)
        # Ensemble steps are requests to their composing models, through submit() below.
        self._ensembles = EnsembleRunner(repository.get, self.submit, self.stream)

    def names_version(self, model: str, version: str) -> bool:
        """Whether `version` is a name one of the model's versions goes by (MLServer's)."""
        return self._repository.names_version(model, version)

    def mlserver_model(self, model: str, version: str) -> bool:
        """Whether it is an MLServer model (ModelVersion.mlserver); False for one not served
        (its request fails on its own)."""
        try:
            return self._repository.get(model, version).mlserver
        except InferdError:
            return False

    def mark_started(self) -> None:
        """The start-up load finished; readiness may now be reported."""
        self._started = True

    # ---- health and metadata ---------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not self._started:
            return False
        return not self._settings.strict_readiness or self._repository.all_ready()

    def model_ready(self, name: str, version: str = "", check_version: bool = False) -> bool:
        """Whether the model (version) serves; with `check_version`, a version that is no
        number raises instead of answering False (as pb_utils.is_model_ready does)."""
        if check_version and version and not self._repository.names_version(name, version):
            version_number(version)
        try:
            self._repository.get(name, version)
        except InferdError:
            return False
        return True

    def server_metadata(self) -> ServerMetadata:
        extensions: tuple[str, ...] = EXTENSIONS
        if self.shared_memory.supports_cuda:  # after system_shared_memory, as Triton lists it
            at = EXTENSIONS.index("system_shared_memory") + 1
            extensions = (*EXTENSIONS[:at], "cuda_shared_memory", *EXTENSIONS[at:])
        return ServerMetadata(self._settings.server_id, inferd.__version__, extensions)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self._repository.get(name, version)
        config = model.config
        assert config is not None
        if version:
            versions: tuple[str, ...] = (version,)
        else:
            ready = self._repository.model_versions(name)
            versions = tuple(str(v.version) for v in ready if v.ready)
        batch = (-1,) if config.max_batch_size > 0 else ()
        return ModelMetadata(
            name=name,
            versions=versions,
            platform=config.platform or config.backend,
            inputs=tuple(_metadata(t, batch) for t in config.inputs),
            outputs=tuple(_metadata(t, batch) for t in config.outputs),
        )

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        return config_to_json(self.model_config_proto(name, version))

    def model_config_proto(self, name: str, version: str = "") -> ModelConfigProto:
        """The normalised config message itself (what gRPC sends; HTTP sends its JSON). An
        ensemble with a decoupled step says it is decoupled, as Triton's does: clients such
        as perf_analyzer read it to stream."""
        model = self._repository.get(name, version)
        config = model.config
        assert config is not None
        proto = config.proto
        if model.ensemble is not None and model.ensemble.decoupled and not config.decoupled:
            proto = type(proto).FromString(proto.SerializeToString())
            proto.model_transaction_policy.decoupled = True
        return proto

    def raw_input(self, name: str, version: str = "") -> tuple[TensorConfig, int]:
        """The single input (and max_batch_size) for a raw binary request body."""
        config = self._repository.get(name, version).config
        assert config is not None
        if len(config.inputs) != 1:
            raise invalid(
                f"raw binary request body needs a model with exactly one input; "
                f"model '{name}' has {len(config.inputs)}"
            )
        return config.inputs[0], config.max_batch_size

    def model_inputs(self, name: str, version: str = "") -> tuple[tuple[TensorConfig, ...], bool]:
        """A model's inputs, and whether it batches (for requests given without shapes)."""
        config = self._repository.get(name, version).config
        assert config is not None
        return config.inputs, config.max_batch_size > 0

    def model_statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Statistics of the ready versions asked for: every model when `name` is empty."""
        if name:
            models = [v for v in self._repository.ready_versions() if v.name == name]
            if not models or len({v.namespace for v in models}) > 1:
                # Never loaded, no version ready, or (--model-namespacing) several models of
                # that name: Triton 2.51's words, as for a version below.
                raise invalid(f"requested model '{name}' is not available")
            if version:
                try:
                    models = [self._repository.get(name, version, models[0].namespace)]
                except InferdError as error:
                    if error.code is ErrorCode.INVALID_ARG:  # a version that is no number
                        raise
                    raise invalid(
                        f"requested model version is not available for model '{name}'"
                    ) from None
        else:
            models = self._repository.ready_versions()
        return [
            model_stats_document(m.name, str(m.version), stats)
            for m in models
            if (stats := m.stats) is not None
        ]

    async def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        return await self._repository.index(ready_only)

    async def load_model(
        self,
        name: str,
        config: str | None = None,
        files: dict[str, bytes] | None = None,
        requested_by: str = "",
    ) -> None:
        """Load or reload; returns when the model is ready or has failed (and then raises).
        `requested_by`: the model whose code asks (pb_utils.load_model)."""
        self._require_model_control()
        await self._repository.load(name, config, files, requested_by)

    async def register_repository(self, root: Path, names: Mapping[str, str]) -> None:
        """Serve the models of another repository, some under names of their own (folder ->
        name); they load when asked for (a SageMaker multi-model endpoint's models)."""
        await self._repository.register(root, names)

    async def unregister_repository(self, root: Path) -> None:
        """Forget a repository register_repository added, unloading its models."""
        await self._repository.unregister(root)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        """Returns once the model takes no new requests; those it holds finish, and its
        instances are freed, in the background (as in Triton 2.51)."""
        self._require_model_control()
        await self._repository.unload(name, unload_dependents)

    def _require_model_control(self) -> None:
        mode = self._settings.model_control_mode
        if mode != "explicit":
            # Triton answers both none and poll mode with this message and code.
            raise unavailable(
                "explicit model load / unload is not allowed if polling is enabled "
                f"(--model-control-mode={mode}; use explicit)"
            )

    def trace_setting(self, model: str = "", update: TraceUpdate | None = None) -> dict[str, Any]:
        """The trace settings in force (for `model`, or the global ones), after `update`."""
        if model and not self.model_ready(model):
            raise invalid(f"Request for unknown model : {model}")  # Triton's words and code
        setting = self.tracing.update(model, update) if update else self.tracing.setting(model)
        return setting.as_dict()

    def loaded_versions(self) -> list[ModelVersion]:
        """The ready versions (models and ensembles), read by the metrics collector at scrape
        time."""
        return self._repository.ready_versions()

    # ---- inference -------------------------------------------------------------------------

    def admit(self, name: str, version: str, arrival_ns: int) -> ModelVersion:
        """Look the model up and refuse a request before decoding it when the model's latency
        objective cannot be met (the load-shedding fast path). Returns the model for submit(),
        so that it is looked up once. An unknown or unready model fails here, before the body is
        parsed: Triton, too, names the missing model rather than a fault in the body."""
        model = self._repository.get(name, version)
        if model.scheduler is not None:
            model.scheduler.admit(arrival_ns)
        return model

    async def infer(
        self, request: InferRequest, model: ModelVersion | None = None
    ) -> InferResponse:
        """`model`: the version admit() resolved for this request, if the front door asked."""
        model, outputs = self.submit(request, model)
        return self.response(request, model, await outputs)

    def submit(
        self,
        request: InferRequest,
        model: ModelVersion | None = None,
        on_done: OnDone | None = None,
    ) -> tuple[ModelVersion, asyncio.Future[Outputs]]:
        """infer() without awaiting: a front door that answers from a callback (no task per
        request) takes the outputs' future here, or passes `on_done`, which the scheduler calls
        as it resolves the future, and builds the answer with response()."""
        if model is None:
            model = self._repository.get(request.model_name, request.model_version)
        if request.trace is not None:
            request.trace.started(model.version, request.id, request.inputs, time.monotonic_ns())
        scheduler = model.scheduler
        if scheduler is None:  # an ensemble: its steps go through their models' schedulers
            return model, self._submit_ensemble(request, model, on_done)
        # A request the model refuses is no failure of the model: Triton 2.51 counts it in
        # neither its statistics nor nv_inference_request_failure.
        batch_size, shape_key = validate_request(request, model)
        if request.outputs:
            self._check_output_regions(request.outputs)
        options = (
            request_options(request.parameters, request.model_name) if request.parameters else None
        )
        streamed = isinstance(request, StreamRequest)
        if scheduler.streams is not None and scheduler.streams.required and not streamed:
            raise DecoupledRefused()  # a decoupled model's answers need a stream to go to
        # A stream's answers go to its stream, not to the cache (MLServer caches none either).
        if self._cached is not None and model.caches and not streamed:
            submit = partial(
                scheduler.submit,
                request.inputs,
                batch_size,
                shape_key,
                request.arrival_ns,
                options or DEFAULT_OPTIONS,
                request=request,
            )
            return model, self._cached.submit(request, model, scheduler.stats, submit, on_done)
        future = scheduler.submit(
            request.inputs,
            batch_size,
            shape_key,
            request.arrival_ns,
            options or DEFAULT_OPTIONS,
            on_done,
            request=request,
        )
        return model, future

    def stream(
        self,
        request: InferRequest,
        on_response: OnStreamResponse,
        model: ModelVersion | None = None,
    ) -> Cancel | None:
        """A request whose answers stream (gRPC ModelStreamInfer): `on_response(response,
        final)` runs on the loop for each answer, in order, the last with `final` set. A
        decoupled model sends 0..n responses (None with `final` = the final flag alone), as
        does an MLServer model's predict_stream(); any other model exactly one. Failures arrive
        as an InferdError response; this never raises. Returns how to drop the request if the
        client leaves (None once answered). `model`: the version an ensemble's step resolved."""
        try:
            if model is None:
                model = self._repository.get(request.model_name, request.model_version)
            scheduler = model.scheduler
            if model.ensemble is not None and model.ensemble.decoupled:
                if request.trace is not None:
                    now = time.monotonic_ns()
                    request.trace.started(model.version, request.id, request.inputs, now)
                batch_size = self._check_ensemble_request(request, model)
                respond = self._stream_responder(request, model, on_response)
                return self._ensembles.stream(request, model, batch_size, respond)
            if scheduler is None or scheduler.streams is None:
                return self._stream_single(request, model, on_response)
            respond = self._stream_responder(request, model, on_response)
            stream = scheduler.streams.open(respond, request.send_credits)
        except InferdError as error:
            on_response(error, True)
            return None
        try:
            _, future = self.submit(stream_request(request, stream), model, stream.settle)
        except InferdError as error:
            stream.abort(error)
            return None

        def cancel() -> None:
            stream.cancelled = True  # the model may ask (is_cancelled()) and stop early
            future.cancel()  # dropped if still queued

        return cancel

    def _stream_single(
        self, request: InferRequest, model: ModelVersion, on_response: OnStreamResponse
    ) -> Cancel:
        def done(future: asyncio.Future[Outputs]) -> None:
            try:
                answer: InferResponse | InferdError = self.response(request, model, future.result())
            except InferdError as error:
                answer = error
            except Exception as exc:
                answer = internal(f"internal error: {exc}")
            on_response(answer, True)

        _, future = self.submit(request, model, done)

        def cancel() -> None:
            future.cancel()

        return cancel

    def _stream_responder(
        self, request: InferRequest, model: ModelVersion, on_response: OnStreamResponse
    ) -> OnResponse:
        """A decoupled model's outputs as responses to `request`; the first one's time since
        arrival goes to the first-response histogram (when exported)."""
        stats = model.stats
        first = None if stats is None else stats.first_response_ms  # None once observed

        def respond(item: StreamItem, final: bool) -> None:
            nonlocal first
            if first is not None and item is not None:
                first.observe((time.monotonic_ns() - request.arrival_ns) // 1_000_000)
                first = None
            if item is None or isinstance(item, InferdError):
                on_response(item, final)
                return
            try:
                answer: InferResponse | InferdError = self.response(request, model, item)
            except InferdError as error:
                answer = error
            on_response(answer, final)

        return respond

    def _submit_ensemble(
        self, request: InferRequest, model: ModelVersion, on_done: OnDone | None
    ) -> asyncio.Future[Outputs]:
        ensemble = model.ensemble
        assert ensemble is not None
        if ensemble.decoupled:
            raise DecoupledRefused()
        batch_size = self._check_ensemble_request(request, model)
        if self._cached is not None and model.caches:
            submit = partial(self._ensembles.submit, request, model, batch_size)
            return self._cached.submit(request, model, ensemble.stats, submit, on_done)
        return self._ensembles.submit(request, model, batch_size, on_done)

    def _check_ensemble_request(self, request: InferRequest, model: ModelVersion) -> int:
        """The request's batch size, once it fits the ensemble (as for any model, a request
        it refuses is not counted as its failure)."""
        batch_size, _ = validate_request(request, model)
        if request.outputs:
            self._check_output_regions(request.outputs)
        if request.parameters:
            request_options(request.parameters, request.model_name)  # refused as for any model
        return batch_size

    def response(
        self, request: InferRequest, model: ModelVersion, outputs: Outputs
    ) -> InferResponse:
        """The answer to a request from its model's outputs (requested outputs, classification);
        outputs asked for in shared memory are written there."""
        response = answer(request, model, outputs)
        if request.outputs:
            self._write_output_regions(request.outputs, response)
        if request.trace is not None:
            request.trace.answered(response.outputs, time.monotonic_ns())
        return response

    def _check_output_regions(self, outputs: list[RequestedOutput]) -> None:
        """Refuse a request whose output regions are missing before running it."""
        for output in outputs:
            if output.shared_memory is not None:
                self.shared_memory.region(output.shared_memory)

    def _write_output_regions(
        self, requested: list[RequestedOutput], response: InferResponse
    ) -> None:
        refs = {o.name: o.shared_memory for o in requested if o.shared_memory is not None}
        if not refs:
            return
        for name, datatype, array in response.outputs:
            ref = refs.get(name)
            if ref is not None:
                self.shared_memory.write_output(ref, name, datatype, array)
        response.in_shared_memory = frozenset(refs)


def _metadata(tensor: TensorConfig, batch: tuple[int, ...]) -> TensorMetadata:
    return TensorMetadata(tensor.name, tensor.datatype, batch + tensor.dims)
