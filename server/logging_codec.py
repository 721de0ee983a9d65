"""The logging extension's bodies: HTTP JSON objects and gRPC `LogSettings` maps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tritonclient.grpc import service_pb2 as pb

from inferd.server.errors import invalid
from inferd.server.json_body import json_object


def http_log_changes(body: bytes) -> dict[str, Any]:
    return json_object(body, "a logging settings request needs a JSON object body")


# The kind each setting takes over gRPC, and how Triton 2.51 names it when another is given.
_KINDS = {
    "log_info": ("bool_param", "boolean"),
    "log_warning": ("bool_param", "boolean"),
    "log_error": ("bool_param", "boolean"),
    "log_verbose_level": ("uint32_param", "int32"),
    "log_format": ("string_param", "string"),
}


def grpc_log_changes(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`LogSettingsRequest.settings` as plain values; a value with no type set is None. A
    value of another kind than its setting's is refused in Triton 2.51's words."""
    changes: dict[str, Any] = {}
    for key, value in settings.items():
        kind = value.WhichOneof("parameter_choice")
        expected = _KINDS.get(key)
        if kind is not None and expected is not None and kind != expected[0]:
            raise invalid(f"expect {expected[1]} for '{key}'")
        changes[key] = None if kind is None else getattr(value, kind)
    return changes


def grpc_log_settings(settings: Mapping[str, Any]) -> Any:
    response = pb.LogSettingsResponse()
    for key, value in settings.items():
        entry = response.settings[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.uint32_param = value
        else:
            entry.string_param = value
    return response
