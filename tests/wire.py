"""Inference through the real tritonclient of either protocol, for tests that run the same
call over HTTP and gRPC: one call, one failure check with each protocol's status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.conftest import RunningServer

PROTOCOLS = ("http", "grpc")
# The status each front door gives an error code (the protocol parity tables).
STATUS = {
    "http": {
        "invalid": "400",
        "not_found": "404",
        "internal": "500",
        "unavailable": "503",
        "unsupported": "501",
    },
    "grpc": {
        "invalid": "StatusCode.INVALID_ARGUMENT",
        "not_found": "StatusCode.NOT_FOUND",
        "internal": "StatusCode.INTERNAL",
        "unavailable": "StatusCode.UNAVAILABLE",
        "unsupported": "StatusCode.UNIMPLEMENTED",
    },
}


def client_for(server: RunningServer, protocol: str) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


def infer(
    server: RunningServer,
    protocol: str,
    model: str,
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None = None,
    class_count: int = 0,
    **options: Any,
) -> dict[str, np.ndarray]:
    """One inference; the answered outputs by name."""
    module: Any = httpclient if protocol == "http" else grpcclient
    client = client_for(server, protocol)
    try:
        tensors = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        wanted = (
            [module.InferRequestedOutput(name, class_count=class_count) for name in outputs]
            if outputs
            else None
        )
        result = client.infer(model, tensors, outputs=wanted, **options)
        response = result.get_response() if protocol == "http" else result.get_response(True)
        return {o["name"]: result.as_numpy(o["name"]) for o in response.get("outputs", [])}
    finally:
        client.close()


def fails(call: Callable[[], Any], protocol: str, code: str) -> str:
    """The message of the error `call` must raise with `code`'s status."""
    with pytest.raises(InferenceServerException) as error:
        call()
    assert error.value.status() == STATUS[protocol][code], error.value.message()
    return str(error.value.message())


def load_failure(server: RunningServer) -> str:
    """Why the one model of the server's repository failed to load (its index entry)."""
    client = client_for(server, "http")
    try:
        [entry] = client.get_model_repository_index()
    finally:
        client.close()
    assert entry["state"] == "UNAVAILABLE", entry
    return str(entry["reason"])
