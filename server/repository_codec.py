"""The model repository extension's load/unload parameters, decoded from each wire format
into plain values: the `config` JSON text, the `file:<path>` contents, `unload_dependents`.

HTTP carries them as a JSON body (file contents base64), gRPC as `ModelRepositoryParameter`
oneofs (file contents as bytes). Parameters the extension does not define are ignored.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from inferd.server.errors import invalid
from inferd.server.json_body import json_object

CONFIG = "config"
FILE_PREFIX = "file:"
UNLOAD_DEPENDENTS = "unload_dependents"

LoadParameters = tuple[str | None, dict[str, bytes]]  # (config JSON, path -> content)


def http_load_parameters(body: bytes) -> LoadParameters:
    config: str | None = None
    files: dict[str, bytes] = {}
    for key, value in _http_parameters(body).items():
        if key == CONFIG:
            if not isinstance(value, str):
                raise invalid("load parameter 'config' must be a string holding a JSON config")
            config = value
        elif key.startswith(FILE_PREFIX):
            if not isinstance(value, str):
                raise invalid(f"load parameter '{key}' must be a base64 string")
            try:
                files[key.removeprefix(FILE_PREFIX)] = base64.b64decode(value, validate=True)
            except ValueError as exc:  # binascii.Error, or a str that is not ASCII
                raise invalid(f"load parameter '{key}' is not valid base64: {exc}") from None
    return config, files


def http_unload_dependents(body: bytes) -> bool:
    value = _http_parameters(body).get(UNLOAD_DEPENDENTS, False)
    if not isinstance(value, bool):
        raise invalid(f"unload parameter '{UNLOAD_DEPENDENTS}' must be a boolean")
    return value


NOT_PARAMETERS = "the request body must be a JSON object whose 'parameters' is an object"


def _http_parameters(body: bytes) -> dict[str, Any]:
    parameters = json_object(body, NOT_PARAMETERS).get("parameters", {})
    if not isinstance(parameters, dict):
        raise invalid(NOT_PARAMETERS)
    return parameters


def grpc_load_parameters(parameters: Mapping[str, Any]) -> LoadParameters:
    """From `RepositoryModelLoadRequest.parameters` (ModelRepositoryParameter values)."""
    config: str | None = None
    files: dict[str, bytes] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if key == CONFIG:
            if kind != "string_param":
                raise invalid(
                    f"invalid value type for load parameter '{key}', expected string_param."
                )
            config = parameter.string_param
        elif key.startswith(FILE_PREFIX):
            if kind != "bytes_param":
                raise invalid(
                    f"invalid value type for load parameter '{key}', expected bytes_param."
                )
            files[key.removeprefix(FILE_PREFIX)] = parameter.bytes_param
    return config, files


def grpc_unload_dependents(parameters: Mapping[str, Any]) -> bool:
    parameter = parameters.get(UNLOAD_DEPENDENTS)
    if parameter is None:
        return False
    if parameter.WhichOneof("parameter_choice") != "bool_param":
        raise invalid(
            f"invalid value type for '{UNLOAD_DEPENDENTS}' parameter, expected bool_param."
        )
    return bool(parameter.bool_param)
