"""KServe's V1 protocol, for clients of KServe's v1 runtimes: `GET /` (liveness), `GET /v1/models`,
`GET /v1/models/{m}` and `POST /v1/models/{m}:predict`, over the same core as /v2.

A predict request is `{"instances": [row, ...]}` (`"inputs"` is taken as the same list, as
KServe's runtimes take it), one row per batch item: a model with one input takes each row as
that input's item (a value or a nested list), a model with several takes each row as an object
keyed by input name. The rows stack into each input's tensor along the first dim (the batch dim
of a batching model; the tensor's first dim of one that does not batch). A BYTES item is a
string, or `{"b64": "..."}` for binary data (TensorFlow Serving's convention). The answer is
`{"predictions": [...]}`: per row, the output's item, or an object of every output's item when
the model has several (outputs without a common first dim come back as one object of whole
outputs). BYTES items come back as text, or as `{"b64": ...}` when they are not UTF-8. Errors
are `{"error": "..."}`: 404 for a model that does not exist, 503 for one that is not ready (with
KServe's words), 400 for a request that does not fit the model.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from inferd.repository.config import TensorConfig
from inferd.server.core import InferenceCore
from inferd.server.errors import ErrorCode, InferdError, invalid
from inferd.server.json_body import json_object
from inferd.server.types import DataType, InferRequest, InferResponse

_JSON = "application/json"


class V1Endpoints:
    def __init__(self, core: InferenceCore, http_status: Mapping[ErrorCode, int]) -> None:
        self._core = core
        self._status = http_status

    async def server_live(self, request: Request) -> Response:
        """`GET /`: KServe's liveness, which its v1 client reads as `status`."""
        if not self._core.live():
            return _json({"error": "Server is not live"}, 400)
        return _json({"status": "alive"})

    async def models(self, request: Request) -> Response:
        names = sorted({v.name for v in self._core.loaded_versions()})
        return _json({"models": names})

    async def model_ready(self, request: Request) -> Response:
        name = request.path_params["model"]
        refusal = await self._refusal(name)
        if refusal is not None:
            return refusal
        return _json({"name": name, "ready": True})

    async def predict(self, request: Request) -> Response:
        arrival_ns = time.monotonic_ns()
        name = request.path_params["model"]
        refusal = await self._refusal(name)
        if refusal is not None:
            return refusal
        try:
            model = self._core.admit(name, "", arrival_ns)
            specs, batching = self._core.model_inputs(name)
            decoded = decode_predict_request(await request.body(), name, specs, batching)
            decoded.arrival_ns = arrival_ns
            response = await self._core.infer(decoded, model)
        except InferdError as error:
            return _json({"error": error.message}, self._status[error.code])
        return _json({"predictions": predictions(response)})

    async def _refusal(self, name: str) -> Response | None:
        """KServe's answer for a model that does not exist or is not ready; None if ready."""
        if self._core.model_ready(name):
            return None
        if any(entry.name == name for entry in await self._core.repository_index()):
            return _json({"error": f"Model with name {name} is not ready."}, 503)
        return _json({"error": f"Model with name {name} does not exist."}, 404)


def decode_predict_request(
    body: bytes, model: str, specs: tuple[TensorConfig, ...], batching: bool
) -> InferRequest:
    data = json_object(body, "the predict request body must be a JSON object")
    rows = data["inputs"] if "inputs" in data else data.get("instances")
    if not isinstance(rows, list) or not rows:
        raise invalid('predict expects "instances": a non-empty list, one item per row')
    if len(specs) == 1 and not all(isinstance(row, dict) for row in rows):
        columns = {specs[0].name: rows}
    else:
        columns = _columns(rows, specs)
    by_name = {spec.name: spec for spec in specs}
    inputs = {}
    for name, items in columns.items():
        spec = by_name.get(name)
        if spec is None:
            raise invalid(f"model '{model}' has no input named '{name}'")
        inputs[name] = _tensor(spec, items)
    return InferRequest(model, "", inputs)


def _columns(rows: list[Any], specs: tuple[TensorConfig, ...]) -> dict[str, list[Any]]:
    """Rows of named inputs as one list per input; every row names the same inputs."""
    if not all(isinstance(row, dict) for row in rows):
        listed = ", ".join(spec.name for spec in specs)
        raise invalid(f"the model has several inputs ({listed}): each instance must be an object")
    names = set(rows[0])
    for index, row in enumerate(rows):
        if set(row) != names:
            raise invalid(f"instance {index} names other inputs than instance 0")
    return {name: [row[name] for row in rows] for name in rows[0]}


def _tensor(spec: TensorConfig, items: list[Any]) -> np.ndarray:
    try:
        if spec.datatype is DataType.BYTES:
            array = np.array(_bytes_items(items), dtype=np.object_)
        else:
            array = np.array(items, dtype=spec.dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise invalid(
            f"input '{spec.name}' does not fit its datatype {spec.datatype.value}: {exc}"
        ) from None
    return array


def _bytes_items(value: Any) -> Any:
    if isinstance(value, list):
        return [_bytes_items(item) for item in value]
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as exc:
            raise invalid(f"a b64 value is not base64: {exc}") from None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool | int | float):
        return str(value).encode()
    raise invalid(f'a BYTES item must be a string or {{"b64": ...}}, not {value!r}')


def predictions(response: InferResponse) -> Any:
    outputs = [(name, _items(datatype, array)) for name, datatype, array in response.outputs]
    if len(outputs) == 1:
        return outputs[0][1]
    counts = {len(items) if isinstance(items, list) else -1 for _, items in outputs}
    if len(counts) != 1 or -1 in counts:  # no common first dim to split by row
        return dict(outputs)
    rows = counts.pop()
    return [{name: items[row] for name, items in outputs} for row in range(rows)]


def _items(datatype: DataType, array: np.ndarray) -> Any:
    if datatype is not DataType.BYTES:
        if datatype is DataType.BF16:
            array = array.astype(np.float32)
        return array.tolist()
    return _texts(array.tolist())


def _texts(value: Any) -> Any:
    if isinstance(value, list):
        return [_texts(item) for item in value]
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    return value


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type=_JSON)
