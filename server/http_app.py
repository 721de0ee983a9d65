"""The HTTP front door: KServe v2 / Triton HTTP routes over the protocol-neutral core.

`/infer` is served by a lean ASGI path in front of the Starlette router (routing costs about a
fifth of the throughput on the hot path); everything else goes through ordinary routes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from inferd.batching.scheduler import Outputs
from inferd.server.core import InferenceCore
from inferd.server.errors import ErrorCode, InferdError, body_too_large, invalid, unsupported
from inferd.server.header_forward import HeaderForward
from inferd.server.hosted_routes import INFER_MODEL
from inferd.server.http1 import FastHandler, HttpRequest, Reply
from inferd.server.http_codec import (
    HeaderCache,
    OutputEncoding,
    decode_infer_request,
    decode_raw_input,
    encode_error,
    encode_infer_response,
)
from inferd.server.http_generate import GenerateEndpoints, v2_event
from inferd.server.http_v1 import V1Endpoints
from inferd.server.json_body import json_object
from inferd.server.logging_codec import http_log_changes
from inferd.server.metrics import MetricsExporter
from inferd.server.repository_codec import http_load_parameters, http_unload_dependents
from inferd.server.restricted_api import Api, Restrictions, http_api, http_refusal
from inferd.server.settings import DEFAULT_STREAM_BUFFER_BYTES
from inferd.server.shared_memory_codec import (
    http_cuda_register,
    http_status,
    http_system_register,
)
from inferd.server.trace_settings import http_trace_update
from inferd.server.tracing import traced, traced_read
from inferd.server.types import InferRequest, ModelIndexEntry

log = logging.getLogger(__name__)

TRACEPARENT = b"traceparent"  # W3C trace context header (OpenTelemetry trace mode)

# One table from error codes to HTTP status (Triton's mapping; 413 for over-size bodies).
HTTP_STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.INVALID_ARG: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNSUPPORTED: 501,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.CANCELLED: 499,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.INTERNAL: 500,
}

MODELS_PREFIX = "/v2/models/"
INFER_SUFFIX = "/infer"
GENERATE_SUFFIX = "/generate"
INFER_STREAM_SUFFIX = "/infer_stream"  # MLServer's
GENERATE_STREAM_SUFFIX = "/generate_stream"
JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
DEFAULT_MAX_INPUT_SIZE = 64 * 1024 * 1024  # Triton's --http-max-input-size default
MAX_FAST_ROUTES = 1024
# The answer's own headers, which a model's may not replace; and what a header name may be.
_ANSWER_HEADERS = frozenset(
    {"content-type", "content-length", "content-encoding", "inference-header-content-length"}
    | {"transfer-encoding", "connection"}
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


@dataclass(frozen=True, slots=True)
class HttpSettings:
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE
    restricted: Restrictions = field(default_factory=dict)  # --http-restricted-api
    header_forward: HeaderForward | None = None  # --http-header-forward-pattern
    stream_buffer_bytes: int = DEFAULT_STREAM_BUFFER_BYTES  # --stream-buffer-byte-size


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: InferdError) -> Response:
    return Response(
        encode_error(error.message), HTTP_STATUS[error.code], media_type="application/json"
    )


class HttpFrontDoor:
    """The ASGI application."""

    def __init__(
        self,
        core: InferenceCore,
        settings: HttpSettings,
        metrics: MetricsExporter | None = None,
    ) -> None:
        self._core = core
        self._max_input_size = settings.max_input_size
        self._restricted = settings.restricted
        # Checked on /infer's fast path only when inference is restricted: one attribute read.
        self._infer_restriction = settings.restricted.get(Api.INFERENCE)
        self._headers = HeaderCache()
        self._header_forward = settings.header_forward
        self._fast_routes: dict[str, FastHandler] = {}  # by path: parsed once, not per request
        self._generate = GenerateEndpoints(core, HTTP_STATUS, settings.stream_buffer_bytes)
        # MLServer's REST routes beside /infer: (suffix, for MLServer models only, handler).
        # Its generate is its infer under another name (a v2 request and answer), its
        # generate_stream its infer_stream; Triton's generate extension serves other models.
        self._mlserver_routes = (
            (GENERATE_SUFFIX, True, self._infer),
            (INFER_STREAM_SUFFIX, False, self._infer_stream),
            (GENERATE_STREAM_SUFFIX, True, self._infer_stream),
        )
        self._router = Starlette(
            routes=_routes(core, self._infer_route, metrics, self._generate),
            exception_handlers={
                HTTPException: _http_exception,
                InferdError: _inferd_error,
                Exception: _unexpected_error,
            },
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._restricted and scope["type"] == "http":
            refusal = _refusal(self._restricted, scope["path"], _headers(scope))
            if refusal is not None:
                await _send(send, *_answer(403, encode_error(refusal), JSON, {}))
                return
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(MODELS_PREFIX) and path.endswith(INFER_SUFFIX):
                named = scope.get(INFER_MODEL)
                target = (
                    (named, "")
                    if named is not None
                    else _parse_infer_path(path, self._core.names_version)
                )
                if target is not None:
                    await self._infer(scope, receive, send, *target)
                    return
            elif path.startswith(MODELS_PREFIX):
                for suffix, mlserver_only, handle in self._mlserver_routes:
                    if not path.endswith(suffix):
                        continue
                    target = _parse_infer_path(path, self._core.names_version, suffix)
                    if target is not None and (
                        not mlserver_only or self._core.mlserver_model(*target)
                    ):
                        await handle(scope, receive, send, *target)
                        return
                    break
        await self._router(scope, receive, send)

    async def _infer_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Reached only for paths the fast path rejects: Starlette then answers 404/405.
        raise HTTPException(404, "Not Found")

    def fast_route(self, method: str, path: str) -> FastHandler | None:
        """For inferd's HTTP/1.1 server: `/infer`, answered as the scheduler resolves the batch."""
        if method != "POST":
            return None
        handler = self._fast_routes.get(path)
        if handler is None:
            if not (path.startswith(MODELS_PREFIX) and path.endswith(INFER_SUFFIX)):
                return None
            target = _parse_infer_path(path, self._core.names_version)
            if target is None:
                return None
            if len(self._fast_routes) >= MAX_FAST_ROUTES:  # paths come from clients: bounded
                self._fast_routes.clear()
            handler = self._fast_routes[path] = partial(self._infer_now, *target)
        return handler

    def _infer_now(
        self, model: str, version: str, http: HttpRequest, reply: Reply
    ) -> asyncio.Future[Outputs] | None:
        arrival_ns = http.arrival_ns  # latency objectives count from here, not from decoding
        headers = dict(http.headers)
        restriction = self._infer_restriction
        if restriction is not None and not restriction.admits(headers):
            reply(*_answer(403, encode_error(http_refusal(restriction)), JSON, headers))
            return None
        trace = None
        if self._core.tracing.enabled:  # the trace extension: one flag to read when it is off
            trace = self._core.tracing.sample(model, headers.get(TRACEPARENT))
            if trace is not None:
                reply = traced(trace, reply, "HTTP", arrival_ns)

        def answer(done: asyncio.Future[Outputs]) -> None:
            # Called by the scheduler as the batch's results come in: answered in the same loop
            # turn, before the loop reads more requests. Never for a cancelled request.
            try:
                response = self._core.response(request, served, done.result())
                payload, header_length = encode_infer_response(response, encoding)
            except Exception as exc:
                reply(*_answer(*_failure(exc, model), JSON, headers))
                return
            content_type = JSON if header_length is None else OCTET_STREAM
            added = self._core.mlserver.answer_headers(response) if served.mlserver else None
            reply(*_answer(200, payload, content_type, headers, header_length, added))

        try:
            admitted = self._core.admit(model, version, arrival_ns)  # sheds load before decoding
            body = _decompressed(http.body, headers, self._max_input_size)
            request, encoding = self._decode(body, headers, model, version)
            if admitted.mlserver:
                self._core.mlserver.wrap_request(request, _text_headers(headers))
            request.arrival_ns = arrival_ns
            request.trace = trace
            served, outputs = self._core.submit(request, admitted, answer)
        except Exception as exc:
            reply(*_answer(*_failure(exc, model), JSON, headers))
            return None
        return outputs

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, model: str, version: str
    ) -> None:
        """The same for uvicorn's ASGI cycle (`--http-stack=uvicorn`)."""
        arrival_ns = time.monotonic_ns()
        headers = _headers(scope)
        trace = self._core.tracing.sample(model, headers.get(TRACEPARENT))
        try:
            served = self._core.admit(model, version, arrival_ns)
            body = await self._read_body(receive, headers)
            request, encoding = self._decode(body, headers, model, version)
            if served.mlserver:
                self._core.mlserver.wrap_request(request, _text_headers(headers))
            request.arrival_ns = arrival_ns
            if trace is not None:
                traced_read(trace, "HTTP", arrival_ns)
                request.trace = trace
            response = await self._core.infer(request, served)
            payload, header_length = encode_infer_response(response, encoding)
        except Exception as exc:
            answer = _answer(*_failure(exc, model), JSON, headers)
        else:
            content_type = JSON if header_length is None else OCTET_STREAM
            added = self._core.mlserver.answer_headers(response) if served.mlserver else None
            answer = _answer(200, payload, content_type, headers, header_length, added)
        start = time.monotonic_ns()
        try:
            await _send(send, *answer)
        finally:
            if trace is not None:
                trace.sent("HTTP", start)

    async def _infer_stream(
        self, scope: Scope, receive: Receive, send: Send, model: str, version: str
    ) -> None:
        """A v2 request whose answers go back as Server-Sent Events of v2 responses, each as
        the model sends it (an MLServer model's predict_stream(), a decoupled model's
        responses, any other model's one answer)."""
        arrival_ns = time.monotonic_ns()
        headers = _headers(scope)
        trace = self._core.tracing.sample(model, headers.get(TRACEPARENT))
        try:
            served = self._core.admit(model, version, arrival_ns)  # an unknown model first
            body = await self._read_body(receive, headers)
            request, _ = self._decode(body, headers, model, version)  # answers are JSON
            if served.mlserver:
                self._core.mlserver.wrap_request(request, _text_headers(headers))
        except Exception as exc:
            start = time.monotonic_ns()
            try:
                await _send(send, *_answer(*_failure(exc, model), JSON, headers))
            finally:
                if trace is not None:
                    trace.sent("HTTP", start)
            return
        request.arrival_ns = arrival_ns
        if trace is not None:
            traced_read(trace, "HTTP", arrival_ns)
            request.trace = trace
        answers = self._generate.open_stream(request)
        event = (
            partial(v2_event, headers=self._core.mlserver.answer_headers)
            if served.mlserver
            else v2_event
        )
        response = await self._generate.event_stream(answers, trace, event)
        await response(scope, receive, send)

    async def _read_body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        limit = self._max_input_size
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise body_too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise body_too_large(limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return _decompressed(body, headers, limit)

    def _decode(
        self, body: bytes, headers: dict[bytes, bytes], model: str, version: str
    ) -> tuple[InferRequest, OutputEncoding]:
        decoded = self._decode_body(body, headers, model, version)
        if self._header_forward is not None:
            self._header_forward.apply(
                decoded[0], ((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers.items())
            )
        return decoded

    def _decode_body(
        self, body: bytes, headers: dict[bytes, bytes], model: str, version: str
    ) -> tuple[InferRequest, OutputEncoding]:
        raw_length = headers.get(b"inference-header-content-length")
        shared = self._core.shared_memory
        if raw_length is None:
            return decode_infer_request(body, None, model, version, self._headers, shared)
        if not raw_length.strip().isdigit():
            raise invalid(
                f"Inference-Header-Content-Length must be a non-negative integer, got "
                f"'{raw_length.decode('latin-1')}'"
            )
        header_length = int(raw_length)
        if header_length > 0:
            return decode_infer_request(body, header_length, model, version, self._headers, shared)
        spec, max_batch_size = self._core.raw_input(model, version)
        array = decode_raw_input(body, spec.name, spec.datatype, spec.dims, max_batch_size)
        return InferRequest(model, version, {spec.name: array}), OutputEncoding(binary_default=True)


def _parse_infer_path(
    path: str, names_version: Callable[[str, str], bool], suffix: str = INFER_SUFFIX
) -> tuple[str, str] | None:
    """`/v2/models/M/infer` or `/v2/models/M/versions/V/infer` -> (M, V); None if neither. V is
    a number, as Triton routes it, or a name one of M's versions goes by (MLServer's). The
    same for another `suffix` than /infer."""
    middle = path[len(MODELS_PREFIX) : -len(suffix)]
    if "/" not in middle:
        return (middle, "") if middle else None
    model, sep, version = middle.partition("/versions/")
    if not (sep and model and version and "/" not in model and "/" not in version):
        return None
    return (model, version) if version.isdigit() or names_version(model, version) else None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def _index_entry(entry: ModelIndexEntry) -> dict[str, str]:
    """As Triton 2.51 prints one: a model never loaded by its name alone, a reason only when
    there is one."""
    if not entry.state:
        return {"name": entry.name}
    found = {"name": entry.name, "version": entry.version, "state": entry.state}
    if entry.reason:
        found["reason"] = entry.reason
    return found


def _refusal(restricted: Restrictions, path: str, headers: dict[bytes, bytes]) -> str | None:
    """Triton's message when `path` is restricted and the request lacks the header."""
    api = http_api(path)
    restriction = restricted.get(api) if api is not None else None
    if restriction is None or restriction.admits(headers):
        return None
    return http_refusal(restriction)


def _decompressed(body: bytes, headers: dict[bytes, bytes], limit: int) -> bytes:
    encoding = headers.get(b"content-encoding")
    if not encoding:
        return body
    name = encoding.strip().lower()
    if name in (b"identity", b""):
        return body
    if name == b"gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif name == b"deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise invalid(f"unsupported Content-Encoding '{encoding.decode('latin-1')}'")
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)  # bounded: no decompression bombs
    except zlib.error as exc:
        raise invalid(f"failed to decompress the {name.decode()} request body: {exc}") from None
    if len(data) > limit:
        raise body_too_large(limit)
    if not decompressor.eof:
        raise invalid(f"the {name.decode()} request body is truncated")
    return data


def _compress(body: bytes, accept: bytes | None) -> tuple[bytes, bytes | None]:
    """Compress the response when the client accepts gzip or deflate, as Triton does."""
    if not accept:
        return body, None
    accepted = {part.split(b";")[0].strip().lower() for part in accept.split(b",")}
    if b"gzip" in accepted:
        compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        return compressor.compress(body) + compressor.flush(), b"gzip"
    if b"deflate" in accepted:
        return zlib.compress(body), b"deflate"
    return body, None


def _failure(exc: Exception, model: str) -> tuple[int, bytes]:
    """The status and `{"error"}` body for a failed inference."""
    if isinstance(exc, InferdError):
        return HTTP_STATUS[exc.code], encode_error(exc.message)
    log.exception("inference on model '%s' failed unexpectedly", model)
    return 500, encode_error(f"internal error: {exc}")


def _answer(
    status: int,
    body: bytes,
    content_type: bytes,
    request_headers: dict[bytes, bytes],
    header_length: int | None = None,
    model_headers: Mapping[str, str] | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An inference answer as (status, headers, body), with the headers the model set (an
    MLServer model's). A 200 is compressed if the client asked; an error never is, as in
    Triton, whose clients read error bodies as they come (tritonclient's aio client accepts
    gzip by default yet does not inflate an error)."""
    content_encoding = None
    if status == 200:
        body, content_encoding = _compress(body, request_headers.get(b"accept-encoding"))
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if header_length is not None:
        headers.append((b"inference-header-content-length", b"%d" % header_length))
    if content_encoding is not None:
        headers.append((b"content-encoding", content_encoding))
    if model_headers:
        headers.extend(_model_headers(model_headers))
    return status, headers, body


def _model_headers(given: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """What a model may add: names and values a header can carry, and none that would
    contradict the answer's own (its length, type and encoding)."""
    headers = []
    for name, value in given.items():
        wire = _header_name(name)
        if wire is None or "\n" in value or "\r" in value:
            log.warning("a model's answer header '%s' was not sent", name)
            continue
        headers.append((wire, value.encode("latin-1", "replace")))
    return headers


@functools.lru_cache(maxsize=1024)  # answers carry the same few names, answer after answer
def _header_name(name: str) -> bytes | None:
    """The name as the answer sends it; None for one a model may not set."""
    lower = name.lower()
    if lower in _ANSWER_HEADERS or not _TOKEN.fullmatch(lower):
        return None
    return lower.encode("latin-1")


def _text_headers(headers: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---- the ordinary routes -------------------------------------------------------------------


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return Response(encode_error(exc.detail), exc.status_code, media_type="application/json")


async def _inferd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferdError)
    return error_response(exc)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("request %s %s failed unexpectedly", request.method, request.url.path)
    return Response(encode_error(f"internal error: {exc}"), 500, media_type="application/json")


Endpoint = Callable[[Request], Awaitable[Response]]


def _routes(
    core: InferenceCore,
    infer: Callable[[Scope, Receive, Send], Awaitable[None]],
    metrics: MetricsExporter | None,
    generate: GenerateEndpoints,
) -> list[Route]:
    async def server_metadata(request: Request) -> Response:
        meta = core.server_metadata()
        return JSONResponse(
            {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
        )

    # A 200 says it to Triton's clients; the body, the open inference protocol's
    # `{"live": true}` / `{"ready": true}`, is what KServe's InferenceRESTClient reads.
    async def live(request: Request) -> Response:
        if core.live():
            return Response(_LIVE, 200, media_type="application/json")
        return Response(encode_error("Server is not live"), 400, media_type="application/json")

    async def ready(request: Request) -> Response:
        if core.ready():
            return Response(_READY, 200, media_type="application/json")
        return Response(encode_error("Server is not ready"), 400, media_type="application/json")

    async def model_ready(request: Request) -> Response:
        name, version = _model_path(request)
        if core.model_ready(name, version, check_version=True):
            return Response(status_code=200)
        return Response(encode_error("Model version not ready"), 400, media_type="application/json")

    async def model_metadata(request: Request) -> Response:
        meta = core.model_metadata(*_model_path(request))
        return JSONResponse(
            {
                "name": meta.name,
                "versions": list(meta.versions),
                "platform": meta.platform,
                "inputs": [_tensor_json(t) for t in meta.inputs],
                "outputs": [_tensor_json(t) for t in meta.outputs],
            }
        )

    async def model_config(request: Request) -> Response:
        return JSONResponse(core.model_config(*_model_path(request)))

    async def statistics(request: Request) -> Response:
        name = request.path_params.get("model", "")
        version = request.path_params.get("version")
        documents = core.model_statistics(name, "" if version is None else str(version))
        return JSONResponse({"model_stats": documents})

    async def repository_index(request: Request) -> Response:
        ready_only = await _ready_flag(request)
        entries = await core.repository_index(ready_only)
        return JSONResponse([_index_entry(e) for e in entries])

    async def load_model(request: Request) -> Response:
        _refuse_named_repository(request)
        # Off the loop: model files can be large, and base64 decoding them takes a while.
        config, files = await asyncio.to_thread(http_load_parameters, await request.body())
        await core.load_model(request.path_params["model"], config, files)
        return Response(status_code=200)

    async def unload_model(request: Request) -> Response:
        _refuse_named_repository(request)
        unload_dependents = http_unload_dependents(await request.body())
        await core.unload_model(request.path_params["model"], unload_dependents)
        return Response(status_code=200)

    async def system_shm_status(request: Request) -> Response:
        regions = core.shared_memory.system_status(request.path_params.get("region", ""))
        return JSONResponse(http_status(regions))

    async def system_shm_register(request: Request) -> Response:
        key, offset, byte_size = http_system_register(await request.body())
        core.shared_memory.register_system(request.path_params["region"], key, offset, byte_size)
        return Response(status_code=200)

    async def system_shm_unregister(request: Request) -> Response:
        core.shared_memory.unregister_system(request.path_params.get("region", ""))
        return Response(status_code=200)

    async def cuda_shm_status(request: Request) -> Response:
        regions = core.shared_memory.cuda_status(request.path_params.get("region", ""))
        return JSONResponse(http_status(regions))

    async def cuda_shm_register(request: Request) -> Response:
        handle, device_id, byte_size = http_cuda_register(await request.body())
        core.shared_memory.register_cuda(
            request.path_params["region"], handle, device_id, byte_size
        )
        return Response(status_code=200)

    async def cuda_shm_unregister(request: Request) -> Response:
        core.shared_memory.unregister_cuda(request.path_params.get("region", ""))
        return Response(status_code=200)

    async def trace_setting(request: Request) -> Response:
        model = request.path_params.get("model", "")
        update = None
        if request.method == "POST":
            update = http_trace_update(
                json_object(await request.body(), "a trace setting request needs a JSON object")
            )
        return JSONResponse(core.trace_setting(model, update))

    async def log_settings(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(core.logging.as_dict())
        return JSONResponse(core.logging.update(http_log_changes(await request.body())))

    async def prometheus_metrics(request: Request) -> Response:
        assert metrics is not None
        return metrics.response()  # async: the stats are read on the loop that updates them

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version:int}"
    system_shm = "/v2/systemsharedmemory"
    system_region = system_shm + "/region/{region}"
    cuda_shm = "/v2/cudasharedmemory"
    cuda_region = cuda_shm + "/region/{region}"
    v1 = V1Endpoints(core, HTTP_STATUS)
    # Knative exposes a single port, so the metrics are on the HTTP port too.
    metrics_routes = [Route("/metrics", prometheus_metrics, methods=["GET"])] if metrics else []
    return [
        *metrics_routes,
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/logging", log_settings, methods=["GET", "POST"]),
        Route("/v2/trace/setting", trace_setting, methods=["GET", "POST"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/{repository}/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", load_model, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", unload_model, methods=["POST"]),
        Route("/v2/repository/{repository}/models/{model}/load", load_model, methods=["POST"]),
        Route("/v2/repository/{repository}/models/{model}/unload", unload_model, methods=["POST"]),
        Route(system_shm + "/status", system_shm_status, methods=["GET"]),
        Route(system_region + "/status", system_shm_status, methods=["GET"]),
        Route(system_region + "/register", system_shm_register, methods=["POST"]),
        Route(system_shm + "/unregister", system_shm_unregister, methods=["POST"]),
        Route(system_region + "/unregister", system_shm_unregister, methods=["POST"]),
        Route(cuda_shm + "/status", cuda_shm_status, methods=["GET"]),
        Route(cuda_region + "/status", cuda_shm_status, methods=["GET"]),
        Route(cuda_region + "/register", cuda_shm_register, methods=["POST"]),
        Route(cuda_shm + "/unregister", cuda_shm_unregister, methods=["POST"]),
        Route(cuda_region + "/unregister", cuda_shm_unregister, methods=["POST"]),
        Route("/v2/models/stats", statistics, methods=["GET"]),  # before the {model} routes
        Route(model, model_metadata, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(model + "/ready", model_ready, methods=["GET"]),
        Route(versioned + "/ready", model_ready, methods=["GET"]),
        Route(model + "/config", model_config, methods=["GET"]),
        Route(versioned + "/config", model_config, methods=["GET"]),
        Route(model + "/stats", statistics, methods=["GET"]),
        Route(model + "/trace/setting", trace_setting, methods=["GET", "POST"]),
        Route(versioned + "/stats", statistics, methods=["GET"]),
        Route(model + "/infer", infer, methods=["POST"]),
        Route(versioned + "/infer", infer, methods=["POST"]),
        # Triton's generate extension (http_generate.py).
        Route(model + "/generate", generate.generate, methods=["POST"]),
        Route(versioned + "/generate", generate.generate, methods=["POST"]),
        Route(model + "/generate_stream", generate.generate_stream, methods=["POST"]),
        Route(versioned + "/generate_stream", generate.generate_stream, methods=["POST"]),
        # KServe's V1 protocol (http_v1.py).
        Route("/", v1.server_live, methods=["GET"]),
        Route("/v1/models", v1.models, methods=["GET"]),
        Route("/v1/models/{model}", v1.model_ready, methods=["GET"]),
        Route("/v1/models/{model}:predict", v1.predict, methods=["POST"]),
    ]


_LIVE = b'{"live":true}'
_READY = b'{"ready":true}'


def _refuse_named_repository(request: Request) -> None:
    if "repository" in request.path_params:  # Triton answers 501 too
        raise unsupported("loading or unloading from a named repository is not supported")


def _model_path(request: Request) -> tuple[str, str]:
    version = request.path_params.get("version")
    return request.path_params["model"], "" if version is None else str(version)


def _tensor_json(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype.value, "shape": list(tensor.shape)}


async def _ready_flag(request: Request) -> bool:
    body = await request.body()
    if not body.strip():
        return False
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"failed to parse the request JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid("the repository index request body must be a JSON object")
    flag = data.get("ready", False)
    if not isinstance(flag, bool):
        raise invalid("'ready' must be a boolean")
    return flag
