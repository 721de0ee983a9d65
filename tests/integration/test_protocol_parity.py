"""HTTP and gRPC answer alike: the same bad requests fail with the same message, and their
status codes map to the same core error code through the two front doors' tables."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import grpc as grpc_lib
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from inferd.server.errors import ErrorCode
from inferd.server.grpc_app import GRPC_STATUS
from inferd.server.http_app import HTTP_STATUS
from tests.conftest import RunningServer
from tests.wire import fails, infer

GOOD = np.zeros((1, 16), dtype=np.int32)


def test_status_tables_cover_every_error_code() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert set(GRPC_STATUS) == set(ErrorCode)
    # Distinct HTTP statuses, so that a status names one code (the parity check relies on it).
    assert len(set(HTTP_STATUS.values())) == len(ErrorCode)


@dataclass(frozen=True)
class Case:
    model: str = "simple"
    version: str = ""
    inputs: tuple[tuple[str, np.ndarray], ...] = (("INPUT0", GOOD), ("INPUT1", GOOD))
    outputs: tuple[str, ...] = field(default=())


CASES = {
    "unknown model": Case(model="no_such_model"),
    "unknown version": Case(version="7"),
    "wrong input name": Case(inputs=(("INPUT0", GOOD), ("INPUTX", GOOD))),
    "wrong datatype": Case(inputs=(("INPUT0", GOOD), ("INPUT1", GOOD.astype(np.float32)))),
    "wrong shape": Case(inputs=(("INPUT0", GOOD), ("INPUT1", np.zeros((1, 15), np.int32)))),
    "batch too large": Case(
        inputs=(("INPUT0", np.zeros((9, 16), np.int32)), ("INPUT1", np.zeros((9, 16), np.int32)))
    ),
    "missing input": Case(inputs=(("INPUT0", GOOD),)),
    "unknown output": Case(outputs=("OUTPUT0", "OUTPUT9")),
}


def datatype(array: np.ndarray) -> str:
    return {np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32"}[array.dtype]


def http_error(client: httpclient.InferenceServerClient, case: Case) -> InferenceServerException:
    inputs = []
    for name, array in case.inputs:
        tensor = httpclient.InferInput(name, list(array.shape), datatype(array))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(name) for name in case.outputs] or None
    with pytest.raises(InferenceServerException) as error:
        client.infer(case.model, inputs, model_version=case.version, outputs=outputs)
    return error.value


def grpc_error(client: grpcclient.InferenceServerClient, case: Case) -> InferenceServerException:
    inputs = []
    for name, array in case.inputs:
        tensor = grpcclient.InferInput(name, list(array.shape), datatype(array))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(name) for name in case.outputs] or None
    with pytest.raises(InferenceServerException) as error:
        client.infer(case.model, inputs, model_version=case.version, outputs=outputs)
    return error.value


@pytest.fixture(scope="module")
def clients(
    examples_server: RunningServer,
) -> Iterator[tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient]]:
    http = httpclient.InferenceServerClient(examples_server.http_url)
    grpc = grpcclient.InferenceServerClient(examples_server.grpc_url)
    yield http, grpc
    http.close()
    grpc.close()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_request_fails_alike(
    clients: tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient],
    case: Case,
) -> None:
    http, grpc = clients
    over_http, over_grpc = http_error(http, case), grpc_error(grpc, case)
    code = {status: code for code, status in HTTP_STATUS.items()}[int(over_http.status())]
    assert over_grpc.status() == str(GRPC_STATUS[code])  # e.g. "StatusCode.INVALID_ARGUMENT"
    assert over_grpc.message() == over_http.message()


def test_metadata_config_and_index_alike(
    clients: tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient],
) -> None:
    http, grpc = clients
    assert grpc.get_server_metadata(as_json=True) == http.get_server_metadata()
    for model in ("simple", "digits", "bytes_identity", "identity_fp32"):
        over_grpc = grpc.get_model_metadata(model)
        over_http = http.get_model_metadata(model)
        assert over_grpc.name == over_http["name"]
        assert list(over_grpc.versions) == over_http["versions"]
        assert over_grpc.platform == over_http["platform"]
        for kind in ("inputs", "outputs"):
            assert [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                for t in getattr(over_grpc, kind)
            ] == over_http[kind]
        config = json_format.ParseDict(http.get_model_config(model), model_config_pb2.ModelConfig())
        assert grpc.get_model_config(model).config == config
    index = grpc.get_model_repository_index().models
    http_index = http.get_model_repository_index()
    assert [
        {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in index
    ] == [{"reason": "", **entry} for entry in http_index]
    assert all("reason" not in entry for entry in http_index)  # as Triton: only when there is one


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_request_checks_word_their_refusals_as_triton_2_51(
    examples_server: RunningServer, protocol: str
) -> None:
    """Words taken from the real tritonserver 2.51 for the same requests, request id included."""
    note = (
        "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension "
        "to be prepended to each input shape. If you want to specify the full shape including "
        "the batch dim in your input dims config, try setting max_batch_size to zero. See the "
        "model configuration docs for more info on max_batch_size."
    )
    short = np.zeros((1, 8), np.int32)
    cases: list[tuple[dict[str, np.ndarray], str, str]] = [
        (
            {"INPUT0": short, "INPUT1": GOOD},
            "r1",
            "[request id: r1] unexpected shape for input 'INPUT0' for model 'simple'. Expected "
            f"[-1,16], got [1,8]. {note}",
        ),
        (
            {"INPUT0": GOOD},
            "",
            "[request id: <id_unknown>] expected 2 inputs but got 1 inputs for model 'simple'. "
            "Got input(s) ['INPUT0'], but missing required input(s) ['INPUT1']. Please provide "
            "all required input(s).",
        ),
        (  # more inputs than the model has: counted before any name is looked at
            {"INPUT0": GOOD, "INPUT1": GOOD, "EXTRA": GOOD},
            "r2",
            "[request id: r2] expected 2 inputs but got 3 inputs for model 'simple'. Got "
            "input(s) ['EXTRA','INPUT0','INPUT1'], but missing required input(s) []. Please "
            "provide all required input(s).",
        ),
        (
            {"INPUT0": GOOD, "INPUT1": np.zeros((2, 16), np.int32)},
            "r3",
            "[request id: r3] input 'INPUT1' batch size does not match other inputs for 'simple'",
        ),
        (
            {"INPUT0": GOOD.astype(np.float32), "INPUT1": GOOD},
            "r4",
            "[request id: r4] inference input 'INPUT0' data-type is 'FP32', but model 'simple' "
            "expects 'INT32'",
        ),
    ]
    for inputs, request_id, expected in cases:
        call = partial(infer, examples_server, protocol, "simple", inputs, request_id=request_id)
        assert fails(call, protocol, "invalid") == expected


def test_a_version_that_is_no_number_is_refused_as_triton_2_51(
    clients: tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient],
) -> None:
    _, grpc = clients
    with pytest.raises(InferenceServerException) as error:
        grpc.get_model_metadata("simple", model_version="x")
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.value.message() == (
        "failed to get model version from specified version string 'x' (details: stol), "
        "version should be an integral value > 0"
    )
    # ... a negative one in Triton's other words, and ModelReady and statistics alike.
    with pytest.raises(InferenceServerException, match="invalid model version specified '-1' ,"):
        grpc.get_model_metadata("simple", model_version="-1")
    with pytest.raises(InferenceServerException, match="'x' \\(details: stol\\)"):
        grpc.is_model_ready("simple", model_version="x")
    with pytest.raises(InferenceServerException, match="'x' \\(details: stol\\)"):
        grpc.get_inference_statistics("simple", model_version="x")
    assert not grpc.is_model_ready("simple", model_version="7")


def test_a_version_past_int64_is_refused_as_triton_2_51(
    examples_server: RunningServer,
    clients: tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient],
) -> None:
    """Triton parses versions with std::stol: one that does not fit fails in its words, on
    every endpoint, HTTP readiness included (400 with that message, not "not ready")."""
    big = "9223372036854775808"
    words = f"failed to get model version from specified version string '{big}' (details: stol)"
    http, grpc = clients
    for call in (http.get_model_metadata, grpc.get_model_metadata, grpc.is_model_ready):
        with pytest.raises(InferenceServerException, match=re.escape(words)):
            call("simple", model_version=big)
    ready = httpx.get(f"http://{examples_server.http_url}/v2/models/simple/versions/{big}/ready")
    assert ready.status_code == 400 and words in ready.json()["error"]
    assert not grpc.is_model_ready("simple", model_version=str(2**63 - 1))


def test_a_named_repository_is_refused_as_triton_2_51(
    clients: tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient],
) -> None:
    _, grpc = clients
    stub = grpc._client_stub
    calls = [
        (stub.RepositoryIndex, grpcclient.service_pb2.RepositoryIndexRequest),
        (stub.RepositoryModelLoad, grpcclient.service_pb2.RepositoryModelLoadRequest),
        (stub.RepositoryModelUnload, grpcclient.service_pb2.RepositoryModelUnloadRequest),
    ]
    for method, message in calls:
        with pytest.raises(grpc_lib.RpcError) as error:
            method(message(repository_name="elsewhere"))
        assert error.value.code() is grpc_lib.StatusCode.UNIMPLEMENTED
        assert error.value.details() == "'repository_name' specification is not supported"
