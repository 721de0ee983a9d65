"""Triton's generate extension (`extension_generate.md`): `POST /v2/models/{m}[/versions/{v}]/
generate` and `.../generate_stream`, flat JSON in, flat JSON out, for any model.

A request is one JSON object: a key named like a model input is that input (its elements fill
the input's config dims, see _tensor; a batching model gets a batch dim of 1), the entries of
a `parameters` object and every other key are request parameters. An answer holds one key per
output, in name order (one element as a scalar, more as a flat array; BYTES as text), then
`model_name` and `model_version`. `generate` needs exactly one response; `generate_stream`
writes each response as a Server-Sent Event (`data: {...}`) as it comes, and an error as
`data: {"error": ...}`. The status is decided by the first event, as in Triton.

Traced requests (the trace extension) are traced as /infer ones: reading the request, the
core's timestamps, and sending the answer (all of a stream's events), written once it is sent.
Unlike /infer, headers are not forwarded as parameters (`--http-header-forward-pattern`): Triton
2.51 forwards them to /infer only.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from inferd.repository.config import TensorConfig
from inferd.server.core import InferenceCore
from inferd.server.errors import ErrorCode, InferdError, invalid
from inferd.server.http_codec import (
    OutputEncoding,
    encode_error,
    encode_infer_response,
    tensor_from_json,
)
from inferd.server.json_body import json_object
from inferd.server.settings import DEFAULT_STREAM_BUFFER_BYTES
from inferd.server.tracing import Trace, traced_read
from inferd.server.types import Cancel, DataType, InferRequest, InferResponse, Params

# Triton's answer when /generate gets none or several responses.
ONE_RESPONSE = (
    "generate expects model to produce exactly 1 response, use generate stream for model that "
    "generates various number of responses"
)
_EVENT_STREAM = "text/event-stream; charset=utf-8"
_JSON = "application/json"

# One streamed answer as the core hands it over: a response, an error, or the final flag alone.
_Item = tuple[InferResponse | InferdError | None, bool]


class GenerateEndpoints:
    """The two endpoints over the core's streaming call (core.stream)."""

    def __init__(
        self,
        core: InferenceCore,
        http_status: Mapping[ErrorCode, int],
        buffer_bytes: int = DEFAULT_STREAM_BUFFER_BYTES,
    ) -> None:
        self._core = core
        self._status = http_status
        self._buffer_bytes = buffer_bytes  # --stream-buffer-byte-size

    async def generate(self, request: Request) -> Response:
        body, trace = await self._read(request)
        try:
            first = await _one_response(self._start(request, body, trace))
        except InferdError as error:
            return self._refuse(error, trace)
        content = orjson.dumps(_answer_json(first))
        if trace is None:
            return Response(content, media_type=_JSON)
        return _TracedResponse(trace, content, 200, _JSON)

    async def generate_stream(self, request: Request) -> Response:
        body, trace = await self._read(request)
        try:
            events = self._start(request, body, trace)
        except InferdError as error:
            return self._refuse(error, trace)
        return await self.event_stream(events, trace, _event)

    def open_stream(self, request: InferRequest) -> AsyncIterator[_Item]:
        """The request's answers, as the core streams them, held for the client (up to
        --stream-buffer-byte-size)."""
        waiting = _Waiting(self._buffer_bytes)
        waiting.cancel = self._core.stream(request, waiting.put)
        return waiting.drain()

    async def event_stream(
        self,
        answers: AsyncIterator[_Item],
        trace: Trace | None,
        event: Callable[[InferResponse | InferdError], bytes],
    ) -> Response:
        """The answers as Server-Sent Events, each written by `event`, as they come. The
        first event decides the status; a final flag alone sends nothing."""
        events = answers  # read on below where this loop stops
        status = 200
        first: list[bytes] = []
        async for item, final in events:
            if item is not None:
                if isinstance(item, InferdError):
                    status = self._status[item.code]
                first.append(event(item))
            if first or final:
                break

        async def stream() -> AsyncIterator[bytes]:
            start = time.monotonic_ns()
            try:
                for written in first:
                    yield written
                async for item, _ in events:
                    if item is not None:
                        yield event(item)
            finally:
                if trace is not None:
                    trace.sent("HTTP", start)

        return StreamingResponse(stream(), status, media_type=_EVENT_STREAM)

    async def _read(self, request: Request) -> tuple[bytes, Trace | None]:
        """The body, and the request's trace if it is sampled (reading stamped)."""
        arrival_ns = time.monotonic_ns()
        body = await request.body()
        if not self._core.tracing.enabled:  # the trace extension: one flag to read when it is off
            return body, None
        traceparent = request.headers.get("traceparent")  # W3C trace context (OpenTelemetry)
        trace = self._core.tracing.sample(request.path_params["model"], traceparent)
        if trace is not None:
            traced_read(trace, "HTTP", arrival_ns)
        return body, trace

    def _start(self, request: Request, body: bytes, trace: Trace | None) -> AsyncIterator[_Item]:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        version = "" if version is None else str(version)
        specs, batching = self._core.model_inputs(name, version)
        decoded = decode_generate_request(body, name, version, specs, batching)
        decoded.trace = trace
        return self.open_stream(decoded)

    def _refuse(self, error: InferdError, trace: Trace | None) -> Response:
        """The error answer; a traced request's is stamped as sent (untraced ones go to the
        app's error handler)."""
        if trace is None:
            raise error
        return _TracedResponse(trace, encode_error(error.message), self._status[error.code], _JSON)


class _TracedResponse(Response):
    """A response whose sending is stamped in its request's trace, which it then writes."""

    def __init__(self, trace: Trace, content: bytes, status: int, media_type: str) -> None:
        super().__init__(content, status, media_type=media_type)
        self._trace = trace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.monotonic_ns()
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._trace.sent("HTTP", start)


async def _one_response(answers: AsyncIterator[_Item]) -> InferResponse:
    """/generate's single answer; none or several is an error, as is an error response."""
    first: InferResponse | None = None
    async for item, final in answers:
        if isinstance(item, InferdError):
            raise item
        if item is not None:
            if first is not None:
                raise invalid(ONE_RESPONSE)
            first = item
        if final:
            break
    if first is None:
        raise invalid(ONE_RESPONSE)
    return first


class _Waiting:
    """A request's answers waiting for its client, up to `buffer_bytes` of them (tensor data):
    past it, the answers go, the request is cancelled, and an error ends the stream, rather
    than a client that reads slowly filling the server's memory."""

    def __init__(self, buffer_bytes: int) -> None:
        self._queue: asyncio.Queue[tuple[InferResponse | InferdError | None, bool, int]] = (
            asyncio.Queue()
        )
        self._bytes = 0
        self._buffer_bytes = buffer_bytes
        self._over = False
        self.cancel: Cancel | None = None

    def put(self, item: InferResponse | InferdError | None, final: bool) -> None:
        """On the loop, from the core, in order."""
        if self._over:
            return
        size = _data_bytes(item)
        self._bytes += size
        if self._bytes <= self._buffer_bytes:
            self._queue.put_nowait((item, final, size))
            return
        self._over = True
        while not self._queue.empty():
            self._queue.get_nowait()
        if self.cancel is not None:
            self.cancel()  # the model may stop (is_cancelled()); a queued request never runs
        error = InferdError(
            ErrorCode.TOO_LARGE,
            f"the client reads the stream's responses too slowly: more than "
            f"{self._buffer_bytes} bytes of them wait to be sent (--stream-buffer-byte-size)",
        )
        self._queue.put_nowait((error, True, 0))

    async def drain(self) -> AsyncIterator[_Item]:
        """The answers in order, up to the final one; a client that leaves early cancels."""
        done = False
        try:
            while not done:
                item, final, size = await self._queue.get()
                self._bytes -= size
                done = final
                yield item, final
        finally:
            if not done and self.cancel is not None:
                self.cancel()


def _data_bytes(item: InferResponse | InferdError | None) -> int:
    if not isinstance(item, InferResponse):
        return 0
    return sum(
        sum(len(v) for v in array.flat) if array.dtype == object else array.nbytes
        for _, _, array in item.outputs
    )


def decode_generate_request(
    body: bytes, model: str, version: str, specs: tuple[TensorConfig, ...], batching: bool
) -> InferRequest:
    if not body.strip():  # Triton 2.51's words (it answers 500)
        raise invalid("failed to parse the request JSON buffer: The document is empty.")
    data = json_object(body, "the generate request body must be a JSON object")
    inputs: dict[str, np.ndarray] = {}
    parameters: Params = {}
    by_name = {spec.name: spec for spec in specs}
    for key, value in data.items():
        spec = by_name.get(key)
        if spec is not None:
            inputs[key] = _tensor(spec, value, batching)
        elif key == "parameters":  # its entries are parameters, as in Triton 2.51
            if not isinstance(value, dict):
                raise invalid("Expected JSON object for keyword: 'parameters'")
            for name, item in value.items():
                parameters[name] = _parameter(name, item, "Converting keyword: 'parameters': ")
        else:
            parameters[key] = _parameter(key, value)
    return InferRequest(model, version, inputs, parameters=parameters)


def _parameter(name: str, value: Any, context: str = "") -> bool | int | float | str:
    if isinstance(value, bool | int | float | str):
        return value
    raise invalid(  # Triton 2.51's words (a float is accepted too)
        f"{context}parameter '{name}' has invalid type. It should be either 'int', 'bool', or "
        "'string'."
    )


def _tensor(spec: TensorConfig, value: Any, batching: bool) -> np.ndarray:
    """An input as Triton 2.51's generate makes it: its elements (a scalar is one; nested
    arrays count as one element each and are read as /infer reads `data`) fill the config's
    dims, the last variable dim taking what the fixed ones leave over, the others 1."""
    items = value if isinstance(value, list) else [value]
    shape = _fitted_shape(spec, len(items))
    array = tensor_from_json(items, spec.name, spec.datatype, shape)
    return array.reshape(1, *shape) if batching else array


def _fitted_shape(spec: TensorConfig, count: int) -> tuple[int, ...]:
    dims = spec.dims
    fixed = math.prod(d for d in dims if d != -1)
    variable = [i for i, d in enumerate(dims) if d == -1]
    if not variable and count == fixed:
        return dims
    if variable and (count % fixed == 0 if fixed else count == 0):
        shape = [1 if d == -1 else d for d in dims]
        shape[variable[-1]] = count // fixed if fixed else 0
        return tuple(shape)
    raise invalid(f"The schema can not convert input '{spec.name}' to tensor with proper shape")


def _answer_json(response: InferResponse) -> dict[str, Any]:
    # The outputs by name, then the model's name and version, in Triton 2.51's order.
    answer: dict[str, Any] = {}
    for name, datatype, array in sorted(response.outputs, key=lambda output: output[0]):
        items = array.ravel().tolist()
        if datatype is DataType.BYTES:
            items = [_text(item) for item in items]
        answer[name] = items[0] if len(items) == 1 else items
    answer["model_name"] = response.model_name
    answer["model_version"] = response.model_version
    return answer


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)


def _event(item: InferResponse | InferdError) -> bytes:
    content = {"error": item.message} if isinstance(item, InferdError) else _answer_json(item)
    return _sse(orjson.dumps(content))


def v2_event(
    item: InferResponse | InferdError,
    headers: Callable[[InferResponse], Mapping[str, str]] | None = None,
) -> bytes:
    """An event of MLServer's infer_stream: a v2 JSON response (outputs as JSON data), or the
    error. `headers` gives a response's headers, which go in its parameters, as MLServer's
    events carry them."""
    if isinstance(item, InferdError):
        return _sse(encode_error(item.message))
    try:
        content, _ = encode_infer_response(
            item, OutputEncoding(), None if headers is None else headers(item)
        )
    except InferdError as error:  # BYTES that are not text: JSON cannot carry them
        return _sse(encode_error(error.message))
    return _sse(content)


def _sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"
