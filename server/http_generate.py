"""Triton's generate extension (`extension_generate.md`): `POST /v2/models/{m}[/versions/{v}]/
generate` and `.../generate_stream`, flat JSON in, flat JSON out, for any model.

A request is one JSON object: a key named like a model input is that input (a scalar becomes
a one-element tensor, a flat array a 1-D one; a batching model gets a batch dim of 1), every
other key a request parameter. An answer holds `model_name`, `model_version` and one key per
output (one element as a scalar, more as a flat array; BYTES as text). `generate` needs exactly
one response; `generate_stream` writes each response as a Server-Sent Event (`data: {...}`) as
it comes, and an error as `data: {"error": ...}`. The status is decided by the first event,
as in Triton.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from inferd.repository.config import TensorConfig
from inferd.server.core import InferenceCore
from inferd.server.errors import ErrorCode, InferdError, invalid
from inferd.server.json_body import json_object
from inferd.server.types import DataType, InferRequest, InferResponse, Params

# Triton's answer when /generate gets none or several responses.
ONE_RESPONSE = (
    "generate expects model to produce exactly 1 response, use generate stream for model that "
    "generates various number of responses"
)
_EVENT_STREAM = "text/event-stream; charset=utf-8"

# One streamed answer as the core hands it over: a response, an error, or the final flag alone.
_Item = tuple[InferResponse | InferdError | None, bool]


class GenerateEndpoints:
    """The two endpoints over the core's streaming call (core.stream)."""

    def __init__(self, core: InferenceCore, http_status: Mapping[ErrorCode, int]) -> None:
        self._core = core
        self._status = http_status

    async def generate(self, request: Request) -> Response:
        answers = await self._start(request)
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
        return Response(orjson.dumps(_answer_json(first)), media_type="application/json")

    async def generate_stream(self, request: Request) -> Response:
        answers = await self._start(request)
        events = answers.__aiter__()
        # The first event decides the status; a final flag alone sends nothing.
        status = 200
        first: list[bytes] = []
        async for item, final in events:
            if item is not None:
                if isinstance(item, InferdError):
                    status = self._status[item.code]
                first.append(_event(item))
            if first or final:
                break

        async def body() -> AsyncIterator[bytes]:
            for event in first:
                yield event
            async for item, _ in events:
                if item is not None:
                    yield _event(item)

        return StreamingResponse(body(), status, media_type=_EVENT_STREAM)

    async def _start(self, request: Request) -> AsyncIterator[_Item]:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        version = "" if version is None else str(version)
        specs, batching = self._core.model_inputs(name, version)
        decoded = decode_generate_request(await request.body(), name, version, specs, batching)
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        cancel = self._core.stream(decoded, lambda item, final: queue.put_nowait((item, final)))
        return _drain(queue, cancel)


async def _drain(queue: asyncio.Queue[_Item], cancel: Any) -> AsyncIterator[_Item]:
    """The answers in order, up to the final one; a client that leaves early cancels."""
    done = False
    try:
        while not done:
            item, final = await queue.get()
            done = final
            yield item, final
    finally:
        if not done and cancel is not None:
            cancel()


def decode_generate_request(
    body: bytes, model: str, version: str, specs: tuple[TensorConfig, ...], batching: bool
) -> InferRequest:
    data = json_object(body, "the generate request body must be a JSON object")
    inputs: dict[str, np.ndarray] = {}
    parameters: Params = {}
    by_name = {spec.name: spec for spec in specs}
    for key, value in data.items():
        spec = by_name.get(key)
        if spec is not None:
            inputs[key] = _tensor(spec, value, batching)
        elif isinstance(value, bool | int | float | str):
            parameters[key] = value
        else:
            raise invalid(
                f"generate request parameter '{key}' must be a string, number or boolean "
                f"(or name an input of model '{model}')"
            )
    return InferRequest(model, version, inputs, parameters=parameters)


def _tensor(spec: TensorConfig, value: Any, batching: bool) -> np.ndarray:
    items = value if isinstance(value, list) else [value]
    if any(isinstance(item, list | dict) or item is None for item in items):
        raise invalid(f"generate input '{spec.name}' must be a scalar or a flat array")
    try:
        if spec.datatype is DataType.BYTES:
            array = np.empty(len(items), dtype=np.object_)
            array[:] = [
                item.encode() if isinstance(item, str) else str(item).encode() for item in items
            ]
        else:
            array = np.array(items, dtype=spec.dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise invalid(
            f"generate input '{spec.name}' does not fit its datatype {spec.datatype.value}: {exc}"
        ) from None
    return array.reshape(1, -1) if batching else array


def _answer_json(response: InferResponse) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    for name, datatype, array in response.outputs:
        items = array.ravel().tolist()
        if datatype is DataType.BYTES:
            items = [_text(item) for item in items]
        answer[name] = items[0] if len(items) == 1 else items
    return answer


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)


def _event(item: InferResponse | InferdError) -> bytes:
    content = {"error": item.message} if isinstance(item, InferdError) else _answer_json(item)
    return b"data: " + orjson.dumps(content) + b"\n\n"
