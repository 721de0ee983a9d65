"""The shared-memory registration APIs on the wire: HTTP bodies and gRPC messages <-> the
registry's terms. Pure functions, no I/O."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from tritonclient.grpc import service_pb2 as pb

from inferd.server.cuda_shared_memory import CudaRegionStatus
from inferd.server.errors import invalid
from inferd.server.json_body import json_object
from inferd.server.shared_memory import SystemRegionStatus

NOT_OBJECT = "a shared memory register request needs a JSON object body"


def http_system_register(body: bytes) -> tuple[str, int, int]:
    """`{"key", "offset", "byte_size"}` -> (key, offset, byte_size); offset defaults to 0."""
    doc = json_object(body, NOT_OBJECT)
    key = doc.get("key")
    if not isinstance(key, str):
        raise invalid("Shared memory register request has no 'key' field (a string)")
    if "byte_size" not in doc:
        raise invalid("Shared memory register request has no 'byte_size' field")
    return key, _size(doc, "offset", 0), _size(doc, "byte_size", 0)


def http_cuda_register(body: bytes) -> tuple[bytes, int, int]:
    """`{"raw_handle": {"b64"}, "device_id", "byte_size"}` -> (handle, device_id, byte_size)."""
    doc = json_object(body, NOT_OBJECT)
    raw = doc.get("raw_handle")
    encoded = raw.get("b64") if isinstance(raw, dict) else None
    if not isinstance(encoded, str):
        raise invalid("Shared memory register request has no 'raw_handle' field ({'b64': ...})")
    try:
        handle = base64.b64decode(encoded, validate=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        raise invalid("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t") from None
    for field in ("device_id", "byte_size"):
        if field not in doc:
            raise invalid(f"Shared memory register request has no '{field}' field")
    return handle, _size(doc, "device_id", 0), _size(doc, "byte_size", 0)


def _size(doc: dict[str, Any], field: str, default: int) -> int:
    value = doc.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(f"'{field}' must be a non-negative integer, got {value!r}")
    return value


RegionStatus = SystemRegionStatus | CudaRegionStatus


def http_status(regions: Sequence[RegionStatus]) -> list[dict[str, Any]]:
    """The status list; each kind's fields are named as on the wire, in the wire's order."""
    return [asdict(region) for region in regions]


StatusResponse = TypeVar(
    "StatusResponse", pb.SystemSharedMemoryStatusResponse, pb.CudaSharedMemoryStatusResponse
)


def grpc_status(
    response_type: type[StatusResponse], regions: Sequence[RegionStatus]
) -> StatusResponse:
    response = response_type()
    for region in regions:
        response.regions[region.name].CopyFrom(response_type.RegionStatus(**asdict(region)))
    return response
