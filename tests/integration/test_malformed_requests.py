"""Seeded mutation fuzzing of inference requests on a real server, over HTTP and gRPC: valid
requests with a field or a byte changed must get a protocol error (4xx with {"error": "..."},
a gRPC status other than INTERNAL or UNKNOWN) or an answer, never a 500, a crash, a hang or a
traceback. The counts are small and the seeds fixed, so a run is repeatable and short."""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as rpc

from tests.conftest import EXAMPLES, RunningServer
from tests.python_models import write_python_model

Factory = Callable[..., RunningServer]

# Echoes every input it is given as the output of the same name.
ECHO = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor(t.name(), t.as_numpy()) for t in r.inputs()]
            )
            for r in requests
        ]
"""
ECHO_CONFIG = """
backend: "python"
input [
  { name: "B" data_type: TYPE_BOOL dims: [ -1 ] optional: true },
  { name: "S" data_type: TYPE_STRING dims: [ -1, -1 ] optional: true },
  { name: "I64" data_type: TYPE_INT64 dims: [ 2 ] optional: true }
]
output [
  { name: "B" data_type: TYPE_BOOL dims: [ -1 ] },
  { name: "S" data_type: TYPE_STRING dims: [ -1, -1 ] },
  { name: "I64" data_type: TYPE_INT64 dims: [ 2 ] }
]
"""

ODD_VALUES: list[Any] = [
    None, True, 0, -1, 2**31, 2**63, -(2**63) - 1, 1e308, "", "x", "FP32", "BYTES", "\u00e9",
    "x" * 2000, [], {}, [[]], [None], [-1], [1] * 70, [2**40], {"binary_data_size": -5},
    {"classification": "2"},
]  # fmt: skip

SIMPLE = [
    {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
    {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
]
HTTP_SEEDS: list[tuple[str, dict[str, Any]]] = [
    ("simple/infer", {"inputs": SIMPLE, "outputs": [{"name": "OUTPUT0"}]}),
    ("echo/infer", {
        "id": "r",
        "inputs": [
            {"name": "B", "shape": [1], "datatype": "BOOL", "data": [True]},
            {"name": "S", "shape": [1, 2], "datatype": "BYTES", "data": ["x", "y"]},
            {"name": "I64", "shape": [2], "datatype": "INT64", "data": [1, 2]},
        ],
        "parameters": {"note": 1},
    }),
    ("echo/generate", {"S": "a", "I64": [1, 2], "parameters": {"p": 1}}),
]  # fmt: skip


def mutated(document: Any, rng: random.Random) -> Any:
    """`document` with one to three values replaced, dropped or added at random places."""
    document = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        places = list(_places(document))
        if not places:
            return document
        container, key = rng.choice(places)
        action = rng.random()
        if action < 0.6:
            container[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif action < 0.8:
            del container[key]
        elif isinstance(container, dict):
            container[rng.choice(["shape", "datatype", "data", "parameters", "x"])] = rng.choice(
                ODD_VALUES
            )
        else:
            container.append(copy.deepcopy(rng.choice(ODD_VALUES)))
    return document


def _places(node: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key or index) of every value in `node`, the first 20 of each container."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in list(items)[:20]:
        yield node, key
        if isinstance(child, dict | list):
            yield from _places(child)


def changed_bytes(data: bytes, rng: random.Random) -> bytes:
    cut = rng.randrange(len(data) + 1)
    return data[:cut] + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 8)))


@pytest.fixture
def server(tmp_path: Path, server_factory: Factory) -> RunningServer:
    shutil.copytree(EXAMPLES / "simple", tmp_path / "simple")
    write_python_model(tmp_path, "echo", ECHO, ECHO_CONFIG)
    return server_factory(model_repositories=(tmp_path,))


def test_mutated_http_requests_get_protocol_errors(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(7)
    statuses: set[int] = set()
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=20) as client:
        for _ in range(400):
            path, seed = rng.choice(HTTP_SEEDS)
            body = json.dumps(mutated(seed, rng)).encode()
            headers = {}
            if rng.random() < 0.2:
                body = changed_bytes(body, rng)
            elif rng.random() < 0.2:  # the binary extension, with a header length of any kind
                headers["Inference-Header-Content-Length"] = str(
                    rng.choice([len(body), len(body) + 4, -1, 2**40, "x"])
                )
                body += struct.pack("<4i", 1, 2, 3, 4)
            answer = client.post(f"/v2/models/{path}", content=body, headers=headers)
            statuses.add(answer.status_code)
            if answer.status_code != 200:
                assert answer.status_code < 500 or answer.status_code == 503, answer.text
                error = answer.text.removeprefix("data: ").strip()
                assert isinstance(json.loads(error)["error"], str), answer.text
        assert client.get("/v2/health/live").status_code == 200
    assert 200 in statuses and 400 in statuses  # the mutations reached both ends
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]


def test_mutated_grpc_requests_get_protocol_errors(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(11)
    seeds = []
    for raw in (False, True):
        request = pb.ModelInferRequest(model_name="simple")
        for name in ("INPUT0", "INPUT1"):
            tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            values = np.arange(16, dtype=np.int32)
            if raw:
                request.raw_input_contents.append(values.tobytes())
            else:
                tensor.contents.int_contents.extend(values.tolist())
        seeds.append(request)
    codes: set[grpc.StatusCode] = set()
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = rpc.GRPCInferenceServiceStub(channel)
        for _ in range(400):
            request = pb.ModelInferRequest()
            request.CopyFrom(rng.choice(seeds))
            mutate_message(request, rng)
            try:
                stub.ModelInfer(request, timeout=20)
                codes.add(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                code = error.code()
                codes.add(code)
                assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                    error.details(),
                    request,
                )
                assert code is not grpc.StatusCode.DEADLINE_EXCEEDED, request
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]


PARAMETER_VALUES = [
    ("bool_param", True),
    ("int64_param", -1),
    ("uint64_param", 2**64 - 1),
    ("string_param", "\u00e9"),
]


def mutate_message(request: pb.ModelInferRequest, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 2)):
        tensor = rng.choice(request.inputs) if request.inputs else None
        action = rng.randrange(9)
        if action == 0 and tensor is not None:
            tensor.datatype = rng.choice(["FP32", "BYTES", "BOOL", "FP16", "", "INT8"])
        elif action == 1 and tensor is not None:
            shape = [*tensor.shape, rng.choice([0, 1, 2, 2**31])]
            tensor.ClearField("shape")
            tensor.shape.extend(rng.sample(shape, len(shape)) if rng.random() < 0.5 else shape)
        elif action == 2 and request.raw_input_contents:
            index = rng.randrange(len(request.raw_input_contents))
            request.raw_input_contents[index] = changed_bytes(
                request.raw_input_contents[index], rng
            )
        elif action == 3 and tensor is not None:
            request.inputs.remove(tensor)
        elif action == 4 and tensor is not None:
            request.inputs.add().CopyFrom(tensor)
        elif action == 5:
            parameter = request.parameters[rng.choice(["sequence_id", "priority", "x", "triton_x"])]
            kind, value = rng.choice(PARAMETER_VALUES)
            setattr(parameter, kind, value)
        elif action == 6:
            output = request.outputs.add(name=rng.choice(["OUTPUT0", "OUTPUT1", "nope"]))
            output.parameters["classification"].int64_param = rng.choice([-1, 0, 2])
        elif action == 7 and tensor is not None and not request.raw_input_contents:
            tensor.contents.fp32_contents.extend([1.0] * rng.choice([1, 16]))
        else:
            request.raw_input_contents.append(b"\x00" * rng.choice([0, 4, 64]))


CONFIG_VALUES: list[Any] = [
    None, True, 0, -1, 1, 2, 16, 77, 2**40, "", "x", "TYPE_FP32", "TYPE_STRING", "KIND_GPU",
    "KIND_MODEL", "CONTROL_SEQUENCE_START", [], [-1], [0], [1, -1], {}, [{}], {"x": 1},
]  # fmt: skip


def test_mutated_configs_fail_to_load_with_a_reason(
    tmp_path: Path, server_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Load-API configs with a field changed: each loads or is refused (400) with a reason;
    none fails unforeseen (500, or a traceback in the log)."""
    shutil.copytree(EXAMPLES / "simple", tmp_path / "simple")
    write_python_model(tmp_path, "echo", ECHO, ECHO_CONFIG)
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="explicit", load_models=("*",)
    )
    rng = random.Random(5)
    statuses: set[int] = set()
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=60) as client:
        seeds = {
            name: client.get(f"/v2/models/{name}/config").json() for name in ("simple", "echo")
        }
        for _ in range(300):
            name = rng.choice(list(seeds))
            config = copy.deepcopy(seeds[name])
            for _ in range(rng.randint(1, 2)):
                container, key = rng.choice(list(_places(config)))
                container[key] = copy.deepcopy(rng.choice(CONFIG_VALUES))
            answer = client.post(
                f"/v2/repository/models/{name}/load",
                json={"parameters": {"config": json.dumps(config)}},
            )
            statuses.add(answer.status_code)
            assert answer.status_code in (200, 400), answer.text
            if answer.status_code == 400:
                assert answer.json()["error"], config
        assert client.get("/v2/health/live").status_code == 200
    assert statuses == {200, 400}
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
