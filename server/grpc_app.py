"""The gRPC front door: `inference.GRPCInferenceService` (Triton / KServe v2).

It runs on the same event loop as the HTTP front door and makes the same core calls, so both
answer alike; it also serves `grpc.health.v1.Health` and server reflection. Messages come from
the compiled modules that tritonclient ships (no .proto compiling at build time). The handlers
are written against `grpc_calls` and carried by either gRPC stack (`grpc_stacks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from tritonclient.grpc import service_pb2 as pb

from inferd.batching.scheduler import Outputs
from inferd.server.core import InferenceCore
from inferd.server.errors import (
    GRPC_REFUSAL,
    DecoupledRefused,
    ErrorCode,
    InferdError,
    internal,
    unsupported,
)
from inferd.server.grpc_calls import MethodKind, Respond, RpcError, RpcMethod, ServerCall
from inferd.server.grpc_codec import (
    decode_infer_request,
    encode_empty_final,
    encode_infer_response,
    encode_stream_error,
    encode_stream_response,
    encode_stream_response_error,
)
from inferd.server.grpc_stacks import GrpcStack, start_stack
from inferd.server.grpc_tls import GrpcTls
from inferd.server.header_forward import HeaderForward
from inferd.server.logging_codec import grpc_log_changes, grpc_log_settings
from inferd.server.repository_codec import grpc_load_parameters, grpc_unload_dependents
from inferd.server.restricted_api import Restrictions, grpc_api, grpc_header, grpc_refusal
from inferd.server.settings import (
    DEFAULT_STREAM_BUFFER_BYTES,
    GrpcChannel,
    GrpcStackName,
    Settings,
)
from inferd.server.shared_memory_codec import grpc_status
from inferd.server.tensor_codec import EMPTY_FINAL_RESPONSE
from inferd.server.trace_settings import grpc_trace_update
from inferd.server.tracing import traced, traced_read
from inferd.server.types import InferResponse, TensorMetadata

log = logging.getLogger(__name__)

# What gRPC metadata may carry as text: its keys' characters (not the protocol's own "grpc-"
# ones, nor binary "-bin" ones) and printable ASCII values.
_METADATA_KEY = re.compile(r"(?!grpc-)[0-9a-z_.-]+(?<!-bin)")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")

# Requests of one ModelStreamInfer call in progress at once (perf_analyzer's --streaming keeps
# its concurrency in flight on one stream). A decoupled request counts until its final answer;
# its responses are not held back (the model sends them from its own threads).
MAX_STREAM_INFLIGHT = 256

_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME: str = _SERVICE.full_name  # "inference.GRPCInferenceService"
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# One table from error codes to gRPC status codes (Triton's mapping).
GRPC_STATUS: Mapping[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}


@dataclass(frozen=True, slots=True)
class GrpcSettings:
    address: str = "0.0.0.0"
    port: int = 8001
    channel: GrpcChannel = field(default_factory=GrpcChannel)
    stack: GrpcStackName = "inferd"
    restricted: Restrictions = field(default_factory=dict)  # --grpc-restricted-protocol
    header_forward: HeaderForward | None = None  # --grpc-header-forward-pattern
    tls: GrpcTls | None = None  # --grpc-use-ssl
    stream_buffer_bytes: int = DEFAULT_STREAM_BUFFER_BYTES  # --stream-buffer-byte-size


def grpc_settings(settings: Settings) -> GrpcSettings:
    return GrpcSettings(
        settings.grpc_address,
        settings.grpc_port,
        settings.grpc_channel,
        settings.grpc_stack,
        settings.grpc_restricted_protocol,
        settings.grpc_header_forward,
        settings.grpc_tls,
        settings.stream_buffer_bytes,
    )


# ---- inference.GRPCInferenceService ---------------------------------------------------------


def _guarded(name: str, method: Callable[[Any], Any]) -> Callable[..., Any]:
    """A unary handler for `method` (request -> response, or a coroutine of it) with the one
    error mapping."""

    async def handler(request: Any, call: ServerCall) -> Any:
        try:
            response = method(request)
            return await response if inspect.isawaitable(response) else response
        except InferdError as error:
            raise RpcError(GRPC_STATUS[error.code], error.message) from None
        except Exception as exc:
            log.exception("gRPC %s failed unexpectedly", name)
            raise RpcError(grpc.StatusCode.INTERNAL, f"internal error: {exc}") from None

    return handler


class InferenceService:
    """Each RPC as a core call; inference handlers are coroutines, the rest plain functions."""

    def __init__(
        self,
        core: InferenceCore,
        restricted: Restrictions | None = None,
        header_forward: HeaderForward | None = None,
        stream_buffer_bytes: int = DEFAULT_STREAM_BUFFER_BYTES,
    ) -> None:
        self._core = core
        self._restricted = restricted or {}
        self._header_forward = header_forward
        self._stream_buffer_bytes = stream_buffer_bytes
        # Requests' metadata is read: for forwarded headers, and for OpenTelemetry contexts.
        self._needs_metadata = header_forward is not None or core.tracing.propagates

    def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._core.live())

    def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._core.ready())

    def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        # A version that is no number fails the call, as in Triton (HTTP's route has none).
        ready = self._core.model_ready(request.name, request.version, check_version=True)
        return pb.ModelReadyResponse(ready=ready)

    def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        meta = self._core.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta.name, version=meta.version, extensions=meta.extensions
        )

    def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        meta = self._core.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[_tensor_metadata(t) for t in meta.inputs],
            outputs=[_tensor_metadata(t) for t in meta.outputs],
        )

    def model_config(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        config = self._core.model_config_proto(request.name, request.version)
        return pb.ModelConfigResponse(config=config)

    def model_statistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        # The statistics document's keys are the protobuf field names: one builder, two doors.
        documents = self._core.model_statistics(request.name, request.version)
        return json_format.ParseDict({"model_stats": documents}, pb.ModelStatisticsResponse())

    async def repository_index(
        self, request: pb.RepositoryIndexRequest
    ) -> pb.RepositoryIndexResponse:
        _refuse_named_repository(request.repository_name)
        entries = await self._core.repository_index(request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in entries
            ]
        )

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest
    ) -> pb.RepositoryModelLoadResponse:
        _refuse_named_repository(request.repository_name)
        config, files = grpc_load_parameters(request.parameters)
        await self._core.load_model(request.model_name, config, files)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        _refuse_named_repository(request.repository_name)
        unload_dependents = grpc_unload_dependents(request.parameters)
        await self._core.unload_model(request.model_name, unload_dependents)
        return pb.RepositoryModelUnloadResponse()

    def system_shm_status(
        self, request: pb.SystemSharedMemoryStatusRequest
    ) -> pb.SystemSharedMemoryStatusResponse:
        regions = self._core.shared_memory.system_status(request.name)
        return grpc_status(pb.SystemSharedMemoryStatusResponse, regions)

    def system_shm_register(
        self, request: pb.SystemSharedMemoryRegisterRequest
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._core.shared_memory.register_system(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    def system_shm_unregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._core.shared_memory.unregister_system(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    def cuda_shm_status(
        self, request: pb.CudaSharedMemoryStatusRequest
    ) -> pb.CudaSharedMemoryStatusResponse:
        regions = self._core.shared_memory.cuda_status(request.name)
        return grpc_status(pb.CudaSharedMemoryStatusResponse, regions)

    def cuda_shm_register(
        self, request: pb.CudaSharedMemoryRegisterRequest
    ) -> pb.CudaSharedMemoryRegisterResponse:
        self._core.shared_memory.register_cuda(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    def cuda_shm_unregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self._core.shared_memory.unregister_cuda(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    def trace_setting(self, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
        """An empty request reads the settings; one with values changes those."""
        update = grpc_trace_update({k: v.value for k, v in request.settings.items()})
        settings = self._core.trace_setting(request.model_name, update)
        response = pb.TraceSettingResponse()
        for key, value in settings.items():
            response.settings[key].value.extend([value] if isinstance(value, str) else value)
        return response

    def log_settings(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        """An empty request reads the settings; one with values changes those."""
        settings = self._core.logging
        changes = grpc_log_changes(request.settings)
        return grpc_log_settings(settings.update(changes) if changes else settings.as_dict())

    async def model_infer(
        self, request: pb.ModelInferRequest, call: ServerCall
    ) -> pb.ModelInferResponse:
        # The path on grpc.aio (--grpc-stack=grpcio), and on inferd's own stack when headers
        # are forwarded; otherwise that takes model_infer_now.
        arrival_ns = time.monotonic_ns()
        trace = None
        if self._core.tracing.enabled:
            trace = self._core.tracing.sample(request.model_name, _traceparent(call.metadata()))
        try:
            served = self._core.admit(request.model_name, request.model_version, arrival_ns)
            decoded = decode_infer_request(request, self._core.shared_memory)
            if self._header_forward is not None:
                self._header_forward.apply(decoded, call.metadata())
            if served.mlserver:
                self._core.mlserver.wrap_request(decoded, dict(call.metadata()))
            if trace is not None:
                traced_read(trace, "GRPC", arrival_ns)
                decoded.trace = trace
            response = await self._core.infer(decoded, served)
            if served.mlserver:
                self._mlserver_trailers(response, call)
            return encode_infer_response(response)
        except Exception as exc:
            raise _infer_error(exc, request.model_name) from None
        finally:
            if trace is not None:  # grpc.aio sends the answer after this returns
                trace.sent("GRPC", time.monotonic_ns())

    def _mlserver_trailers(self, response: InferResponse, call: ServerCall) -> None:
        """An MLServer model's answer headers as trailing metadata, as MLServer sends them."""
        pairs = []
        for name, value in self._core.mlserver.answer_headers(response).items():
            key = name.lower()
            if _METADATA_KEY.fullmatch(key) and _METADATA_VALUE.fullmatch(value):
                pairs.append((key, value))
            else:
                log.warning("a model's answer header '%s' was not sent", name)
        call.set_trailing_metadata(pairs)

    def model_infer_now(
        self, request: pb.ModelInferRequest, respond: Respond, arrival_ns: int, call: ServerCall
    ) -> asyncio.Future[Outputs] | None:
        """model_infer for inferd's own gRPC stack: no task; answered as the scheduler resolves
        the batch (the HTTP/1.1 fast route's way)."""
        model = request.model_name
        trace = None
        if self._core.tracing.enabled:  # the trace extension: one flag to read when it is off
            trace = self._core.tracing.sample(model)
            if trace is not None:
                respond = traced(trace, respond, "GRPC", arrival_ns)

        def answer(done: asyncio.Future[Outputs]) -> None:
            try:
                response = self._core.response(decoded, served, done.result())
                if served.mlserver:
                    self._mlserver_trailers(response, call)
                respond(encode_infer_response(response))
            except Exception as exc:
                respond(_infer_error(exc, model))

        try:
            admitted = self._core.admit(model, request.model_version, arrival_ns)
            decoded = decode_infer_request(request, self._core.shared_memory)
            if admitted.mlserver:
                self._core.mlserver.wrap_request(decoded, dict(call.metadata()))
            decoded.arrival_ns = arrival_ns
            decoded.trace = trace
            served, outputs = self._core.submit(decoded, admitted, answer)
        except Exception as exc:
            respond(_infer_error(exc, model))
            return None
        return outputs

    async def model_stream_infer(
        self, requests: AsyncIterator[pb.ModelInferRequest], call: ServerCall
    ) -> None:
        """Requests run concurrently (up to MAX_STREAM_INFLIGHT unfinished at once: a client
        that sends faster than it reads answers is held back, not buffered without end); each
        answer is written as soon as it is ready, a decoupled model's several in send order,
        interleaved with those of other requests.

        Failures travel as responses with `error_message` set, so the stream stays open.
        Answers wait here while the client reads slower than the models answer, up to
        --stream-buffer-byte-size: past it, the call ends with RESOURCE_EXHAUSTED and its
        requests are cancelled, rather than the server's memory filling up.
        """
        stream = _StreamState(self._stream_buffer_bytes)
        stream.metadata = call.metadata()  # once per call: forwarded, traced, or read by models
        reader = asyncio.create_task(self._read_stream(requests, stream))
        reader.add_done_callback(lambda _: stream.wake.set())
        try:
            while True:
                while stream.writes:
                    reply, size = stream.writes.popleft()
                    await call.write(reply)
                    stream.waiting_bytes -= size
                if stream.overflow:
                    raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, stream.overflow)
                if reader.done() and (not stream.inflight or reader.exception() is not None):
                    break  # all answered, or the client's side of the call failed
                stream.wake.clear()
                await stream.wake.wait()
            reader.result()  # a failed read (the call ended under it) ends the call too
        finally:
            stream.closed = True
            reader.cancel()
            for cancel in list(stream.cancels.values()):
                cancel()

    async def _read_stream(
        self, requests: AsyncIterator[pb.ModelInferRequest], stream: _StreamState
    ) -> None:
        async for request in requests:
            if stream.inflight >= MAX_STREAM_INFLIGHT:  # read on once one is finished
                stream.room.clear()
                await stream.room.wait()
            stream.inflight += 1
            self._stream_start(request, stream)

    def _stream_start(self, request: pb.ModelInferRequest, stream: _StreamState) -> None:
        key = stream.next_key
        stream.next_key += 1
        stream.started(key)
        request_id, model = request.id, request.model_name
        params = request.parameters
        empty_final = EMPTY_FINAL_RESPONSE in params and params[EMPTY_FINAL_RESPONSE].bool_param
        # Until core.stream() returns, an error is a refusal (bad request, unknown model):
        # Triton answers those with the id alone.
        accepted = False
        arrival_ns = time.monotonic_ns()
        trace = None
        if self._core.tracing.enabled:
            trace = self._core.tracing.sample(model, _traceparent(stream.metadata))

        def respond(answer: InferResponse | InferdError | None, final: bool) -> None:
            if final and trace is not None:  # written with the last answer, once it is queued
                trace.sent("GRPC", time.monotonic_ns())
            if stream.closed:  # the call is over: nobody reads
                return
            try:
                if isinstance(answer, InferdError) and accepted:
                    reply: pb.ModelStreamInferResponse | None = encode_stream_response_error(
                        request_id, model, answer.message, final
                    )
                else:
                    reply = _stream_message(answer, final, request_id, model, empty_final)
            except Exception as exc:
                log.exception("encoding a ModelStreamInfer response of '%s' failed", model)
                reply = encode_stream_error(request_id, f"internal error: {exc}")
            if reply is not None:
                stream.write(reply)
            if final:
                stream.finished(key)

        try:
            decoded = decode_infer_request(request, self._core.shared_memory)
            if self._header_forward is not None:
                self._header_forward.apply(decoded, stream.metadata)
            if self._core.mlserver_model(model, request.model_version):
                self._core.mlserver.wrap_request(decoded, dict(stream.metadata))
            if trace is not None:
                traced_read(trace, "GRPC", arrival_ns)
                decoded.trace = trace
        except InferdError as error:
            respond(error, True)
            return
        except Exception as exc:
            log.exception("gRPC stream inference on model '%s' failed", model)
            respond(internal(f"internal error: {exc}"), True)
            return
        cancel = self._core.stream(decoded, respond)
        accepted = True
        if cancel is not None and key in stream.open:
            stream.cancels[key] = cancel

    def methods(self) -> dict[str, RpcMethod]:
        """Every RPC of the service by path; those not implemented yet say so."""
        unary: dict[str, Callable[..., Any]] = {
            "ServerLive": _guarded("ServerLive", self.server_live),
            "ServerReady": _guarded("ServerReady", self.server_ready),
            "ModelReady": _guarded("ModelReady", self.model_ready),
            "ServerMetadata": _guarded("ServerMetadata", self.server_metadata),
            "ModelMetadata": _guarded("ModelMetadata", self.model_metadata),
            "ModelConfig": _guarded("ModelConfig", self.model_config),
            "RepositoryIndex": _guarded("RepositoryIndex", self.repository_index),
            "RepositoryModelLoad": _guarded("RepositoryModelLoad", self.repository_model_load),
            "RepositoryModelUnload": _guarded(
                "RepositoryModelUnload", self.repository_model_unload
            ),
            "ModelStatistics": _guarded("ModelStatistics", self.model_statistics),
            "SystemSharedMemoryStatus": _guarded(
                "SystemSharedMemoryStatus", self.system_shm_status
            ),
            "SystemSharedMemoryRegister": _guarded(
                "SystemSharedMemoryRegister", self.system_shm_register
            ),
            "SystemSharedMemoryUnregister": _guarded(
                "SystemSharedMemoryUnregister", self.system_shm_unregister
            ),
            "CudaSharedMemoryStatus": _guarded("CudaSharedMemoryStatus", self.cuda_shm_status),
            "CudaSharedMemoryRegister": _guarded(
                "CudaSharedMemoryRegister", self.cuda_shm_register
            ),
            "CudaSharedMemoryUnregister": _guarded(
                "CudaSharedMemoryUnregister", self.cuda_shm_unregister
            ),
            "LogSettings": _guarded("LogSettings", self.log_settings),
            "TraceSetting": _guarded("TraceSetting", self.trace_setting),
        }
        methods: dict[str, RpcMethod] = {}
        for method in _SERVICE.methods:
            path = f"/{SERVICE_NAME}/{method.name}"
            parse = message_factory.GetMessageClass(method.input_type).FromString
            serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
            if method.name == "ModelStreamInfer":
                methods[path] = RpcMethod(
                    MethodKind.STREAM_STREAM, self.model_stream_infer, parse, serialize
                )
            elif method.name == "ModelInfer":
                # The callback path reads the call's metadata only for MLServer models:
                # forwarding headers or trace contexts takes model_infer (a task).
                answer_now = None if self._needs_metadata else self.model_infer_now
                methods[path] = RpcMethod(
                    MethodKind.UNARY_UNARY, self.model_infer, parse, serialize, answer_now
                )
            elif method.name in unary:
                methods[path] = RpcMethod(
                    MethodKind.UNARY_UNARY, unary[method.name], parse, serialize
                )
            else:  # every other RPC is unary; its request is not even parsed
                methods[path] = RpcMethod(
                    MethodKind.UNARY_UNARY, _unimplemented(method.name), _raw, _raw
                )
            api = grpc_api(method.name)
            restriction = self._restricted.get(api) if api is not None else None
            if restriction is not None:
                methods[path] = replace(
                    methods[path],
                    required_header=grpc_header(restriction),
                    refusal=grpc_refusal(restriction),
                )
        return methods


def _infer_error(exc: Exception, model: str) -> RpcError:
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, DecoupledRefused):  # Triton's wording for this RPC
        return RpcError(grpc.StatusCode.UNIMPLEMENTED, GRPC_REFUSAL)
    if isinstance(exc, InferdError):
        return RpcError(GRPC_STATUS[exc.code], exc.message)
    log.exception("gRPC inference on model '%s' failed unexpectedly", model, exc_info=exc)
    return RpcError(grpc.StatusCode.INTERNAL, f"internal error: {exc}")


def _refuse_named_repository(repository: str) -> None:
    if repository:  # Triton answers UNIMPLEMENTED too
        raise unsupported("'repository_name' specification is not supported")


def _tensor_metadata(tensor: TensorMetadata) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=tensor.name, datatype=tensor.datatype.value, shape=tensor.shape
    )


class _StreamState:
    """One ModelStreamInfer call: answers waiting to be written, and its unfinished requests
    (a request is finished with its final answer)."""

    def __init__(self, buffer_bytes: int) -> None:
        # Answers to write, with their sizes; how many bytes of them wait, and how many may.
        self.writes: deque[tuple[pb.ModelStreamInferResponse, int]] = deque()
        self.waiting_bytes = 0
        self.buffer_bytes = buffer_bytes
        self.overflow = ""  # why the call ends: the client read too slowly
        self.wake = asyncio.Event()  # an answer to write, or the reader is done
        self.room = asyncio.Event()  # a request finished: the reader may go on
        self.inflight = 0
        self.next_key = 0
        self.open: set[int] = set()
        self.cancels: dict[int, Callable[[], None]] = {}
        self.closed = False  # the call ended
        self.metadata: list[tuple[str, str]] = []  # forwarded headers, trace contexts, models

    def started(self, key: int) -> None:
        self.open.add(key)

    def write(self, reply: pb.ModelStreamInferResponse) -> None:
        """Queue an answer for the writer; past the buffer, end the call instead."""
        size = reply.ByteSize()
        self.waiting_bytes += size
        self.writes.append((reply, size))
        if self.waiting_bytes > self.buffer_bytes:
            self.overflow = (
                f"the client reads the stream's responses too slowly: more than "
                f"{self.buffer_bytes} bytes of them wait to be sent (--stream-buffer-byte-size)"
            )
            self.closed = True  # later answers are dropped; the writer ends the call
            self.writes.clear()
            for cancel in list(self.cancels.values()):
                cancel()  # the models may stop (is_cancelled()); queued requests never run
        self.wake.set()

    def finished(self, key: int) -> None:
        self.inflight -= 1
        self.open.discard(key)
        self.cancels.pop(key, None)
        self.room.set()
        self.wake.set()


def _stream_message(
    answer: InferResponse | InferdError | None,
    final: bool,
    request_id: str,
    model: str,
    empty_final: bool,
) -> pb.ModelStreamInferResponse | None:
    """One answer as Triton writes it on the stream: every response says whether it is the
    request's last (`triton_final_response`); an error carries only its message; a final flag
    that came alone is written only when the client asked for it
    (`triton_enable_empty_final_response`)."""
    if isinstance(answer, InferdError):
        return encode_stream_error(request_id, answer.message)
    if answer is None:
        return encode_empty_final(request_id, model) if empty_final else None
    return encode_stream_response(answer, final)


def _unimplemented(name: str) -> Callable[..., Any]:
    async def handler(request: bytes, call: ServerCall) -> NoReturn:
        raise RpcError(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by inferd yet")

    return handler


def _raw(data: bytes) -> bytes:
    return data


# ---- grpc.health.v1 -------------------------------------------------------------------------

_SERVING: int = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService:
    """grpc.health.v1.Health answered from core readiness, so it is never stale.

    The overall service ("") and the inference service are SERVING exactly when the core is
    ready. Watch streams poll; they end with NOT_SERVING when the server shuts down.
    """

    def __init__(self, core: InferenceCore, poll_interval: float = 1.0) -> None:
        self._core = core
        self._poll_interval = poll_interval
        self._closing = asyncio.Event()

    def close(self) -> None:
        self._closing.set()

    def _status(self, service: str) -> int:
        if service not in ("", SERVICE_NAME):
            return _SERVICE_UNKNOWN
        if self._core.ready() and not self._closing.is_set():
            return _SERVING
        return _NOT_SERVING

    async def check(
        self, request: health_pb2.HealthCheckRequest, call: ServerCall
    ) -> health_pb2.HealthCheckResponse:
        status = self._status(request.service)
        if status == _SERVICE_UNKNOWN:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        return health_pb2.HealthCheckResponse(status=status)

    async def watch(self, request: health_pb2.HealthCheckRequest, call: ServerCall) -> None:
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                await call.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._closing.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._poll_interval)

    def methods(self) -> dict[str, RpcMethod]:
        parse = health_pb2.HealthCheckRequest.FromString
        serialize = health_pb2.HealthCheckResponse.SerializeToString
        return {
            f"/{HEALTH_SERVICE}/Check": RpcMethod(
                MethodKind.UNARY_UNARY, self.check, parse, serialize
            ),
            f"/{HEALTH_SERVICE}/Watch": RpcMethod(
                MethodKind.UNARY_STREAM, self.watch, parse, serialize
            ),
        }


# ---- server reflection ----------------------------------------------------------------------


def reflection_methods(service_names: tuple[str, ...]) -> dict[str, RpcMethod]:
    """grpcio-reflection's servicer, carried like every other handler."""
    servicer = reflection.aio.ReflectionServicer(service_names)

    async def info(requests: AsyncIterator[Any], call: ServerCall) -> None:
        async for response in servicer.ServerReflectionInfo(requests, None):
            await call.write(response)

    return {
        f"/{reflection.SERVICE_NAME}/ServerReflectionInfo": RpcMethod(
            MethodKind.STREAM_STREAM,
            info,
            reflection_pb2.ServerReflectionRequest.FromString,
            reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }


# ---- the server -----------------------------------------------------------------------------


class GrpcServer:
    def __init__(self, stack: GrpcStack, health: HealthService) -> None:
        self._stack = stack
        self.port = stack.port
        self._health = health

    async def stop(self, grace: float) -> None:
        """Refuse new calls, give in-flight ones `grace` seconds, then cancel them."""
        self._health.close()
        await self._stack.stop(grace)


async def start_grpc_server(core: InferenceCore, settings: GrpcSettings) -> GrpcServer:
    health = HealthService(core)
    methods = {
        **InferenceService(
            core, settings.restricted, settings.header_forward, settings.stream_buffer_bytes
        ).methods(),
        **health.methods(),
        **reflection_methods((SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME)),
    }
    stack = await start_stack(
        settings.stack, methods, settings.address, settings.port, settings.channel, settings.tls
    )
    return GrpcServer(stack, health)


def _traceparent(metadata: Iterable[tuple[str, str]]) -> str | None:
    """The W3C trace context a client sent (OpenTelemetry mode continues its trace)."""
    return next((value for key, value in metadata if key == "traceparent"), None)
