"""Response parameters a python model sets (`InferenceResponse(..., parameters=...)`, Triton
25.02+): in the HTTP and gRPC responses, on each response of a stream, and in BLS responses,
through the real tritonclient."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.python_models import (
    RESPONSE_PARAMETERS,
    RESPONSE_PARAMETERS_BLS,
    RESPONSE_PARAMETERS_DECOUPLED,
    response_parameters_config,
    write_python_model,
)
from tests.wire import PROTOCOLS, client_for


@pytest.fixture(scope="module", params=["thread", "process"])
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    """The models in the server's process, then in stub processes."""
    root = tmp_path_factory.mktemp("response_parameters")
    single = response_parameters_config(("PARAMETERS",))
    write_python_model(root, "response_parameters", RESPONSE_PARAMETERS, single)
    decoupled = response_parameters_config(("PARAMETERS",), decoupled=True)
    write_python_model(
        root, "response_parameters_decoupled", RESPONSE_PARAMETERS_DECOUPLED, decoupled
    )
    bls = response_parameters_config(("PARAMETERS", "STREAM"))
    write_python_model(root, "response_parameters_bls", RESPONSE_PARAMETERS_BLS, bls)
    running = start_server(
        replace(TEST_SETTINGS, model_repositories=(root,), python_isolation=request.param)
    )
    yield running
    running.stop()


def _text_input(module: Any, name: str, value: object) -> Any:
    tensor = module.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([json.dumps(value).encode()], dtype=np.object_))
    return tensor


def _grpc_parameters(message: Any) -> dict[str, object]:
    return {
        key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in message.items()
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_models_parameters_reach_the_response(server: RunningServer, protocol: str) -> None:
    params = {"bool": True, "str": "Hello World!", "int": 1024, "empty": ""}
    module: Any = httpclient if protocol == "http" else grpcclient
    client = client_for(server, protocol)
    result = client.infer("response_parameters", [_text_input(module, "PARAMETERS", params)])
    if protocol == "http":
        got = result.get_response()["parameters"]
    else:
        got = _grpc_parameters(result.get_response().parameters)
    assert got == params
    assert json.loads(result.as_numpy("OUTPUT")[0]) == params
    client.close()


def test_a_response_without_parameters_has_none(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    result = client.infer("response_parameters", [_text_input(httpclient, "PARAMETERS", {})])
    assert "parameters" not in result.get_response()
    client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parameters_the_protocol_cannot_carry_fail_the_request(
    server: RunningServer, protocol: str
) -> None:
    module: Any = httpclient if protocol == "http" else grpcclient
    client = client_for(server, protocol)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("response_parameters", [_text_input(module, "PARAMETERS", {"f": 0.5})])
    assert "Expect parameters values to have type bool/int/str, found type <class 'float'>" in (
        raised.value.message()
    )
    assert raised.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    client.close()


def test_each_streamed_response_carries_its_own(server: RunningServer) -> None:
    params: list[dict[str, object]] = [{"bool": False, "int": 2048}, {"str": "Hello World!"}]
    answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer(
        "response_parameters_decoupled",
        [_text_input(grpcclient, "PARAMETERS", params)],
        enable_empty_final_response=True,
    )
    seen = [answers.get(timeout=10) for _ in range(3)]
    client.stop_stream()
    assert all(error is None for _, error in seen)
    got = [_grpc_parameters(result.get_response().parameters) for result, _ in seen]
    # The model sends its final flag alone: its responses say they are not the last.
    assert got == [
        {**params[0], "triton_final_response": False},
        {**params[1], "triton_final_response": False},
        {"triton_final_response": True},
    ]


def test_a_bls_caller_reads_the_called_models_parameters(server: RunningServer) -> None:
    single = {"bool": False, "int": 2048, "str": "Hello World!"}
    streamed = [{}, {"bool": True, "int": 10000}, {"str": "?"}]
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = [
        _text_input(httpclient, "PARAMETERS", single),
        _text_input(httpclient, "STREAM", streamed),
    ]
    result = client.infer("response_parameters_bls", inputs)
    assert json.loads(result.as_numpy("OUTPUT")[0]) == [single, streamed]
    client.close()
