"""The HTTP front door, driven by the real tritonclient.http client and by raw HTTP requests.

Tests on `stacks_server` run over both HTTP stacks (inferd's HTTP/1.1 server and uvicorn).
"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from inferd.server.cli import build_parser, settings_from_args
from tests.conftest import EXAMPLES, RunningServer
from tests.models import reshape_model, write_model


@pytest.fixture(scope="module")
def client(stacks_server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(stacks_server.http_url)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def http(stacks_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{stacks_server.http_url}", timeout=10) as raw:
        yield raw


def simple_inputs(
    batch: int = 1, binary: bool = True
) -> tuple[list[httpclient.InferInput], np.ndarray, np.ndarray]:
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 3, dtype=np.int32)
    inputs = []
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = httpclient.InferInput(name, list(data.shape), "INT32")
        tensor.set_data_from_numpy(data, binary_data=binary)
        inputs.append(tensor)
    return inputs, a, b


# ---- health and metadata -------------------------------------------------------------------


def test_health(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "2")
    assert not client.is_model_ready("no_such_model")


def test_health_bodies_are_what_kserve_clients_read(http: httpx.Client) -> None:
    # Triton's clients read the status alone; KServe's InferenceRESTClient reads the open
    # inference protocol's body (v2) and KServe's `GET /` (v1).
    for path, body in (
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        ("/", {"status": "alive"}),
    ):
        response = http.get(path)
        assert (response.status_code, response.json()) == (200, body)
    response = http.get("/v2/models/simple/ready")  # KServe's client reads the status alone
    assert (response.status_code, response.content) == (200, b"")


def test_server_metadata_names_only_implemented_extensions(
    client: httpclient.InferenceServerClient,
) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "inferd"
    assert meta["extensions"] == [  # Triton 2.51's, in its order (cuda_shared_memory: GPU only)
        "classification",
        "sequence",
        "model_repository",
        "model_repository(unload_dependents)",
        "schedule_policy",
        "model_configuration",
        "system_shared_memory",
        "binary_tensor_data",
        "parameters",
        "statistics",
        "trace",
        "logging",
    ]


def test_model_metadata_has_batch_dim(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("simple")
    assert meta["name"] == "simple"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ]
    assert client.get_model_metadata("identity_fp32", "1")["inputs"][0]["shape"] == [-1, -1]


def test_model_config_is_printed_as_triton_does(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("digits")
    assert config["max_batch_size"] == 32
    assert config["input"][0]["dims"] == [64]  # int64 as a JSON number, not "64"
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert config["dynamic_batching"]["preferred_batch_size"] == [32]  # normalised default
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    # Every field, in the order model_config.proto declares them, as Triton 2.51 prints them.
    assert list(config) == [
        "name", "platform", "backend", "runtime", "version_policy", "max_batch_size", "input",
        "output", "batch_input", "batch_output", "optimization", "dynamic_batching",
        "instance_group", "default_model_filename", "cc_model_filenames", "metric_tags",
        "parameters", "model_warmup", "model_transaction_policy",
    ]  # fmt: skip
    assert list(config["input"][0])[:4] == ["name", "data_type", "format", "dims"]


def test_repository_index(client: httpclient.InferenceServerClient, http: httpx.Client) -> None:
    index = client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [
        ("bytes_identity", "READY"),
        ("digits", "READY"),
        ("identity_fp32", "READY"),
        ("simple", "READY"),
    ]
    ready = http.post("/v2/repository/index", json={"ready": True})
    assert ready.status_code == 200 and len(ready.json()) == 4


# ---- inference -----------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_infer_simple(client: httpclient.InferenceServerClient, binary: bool) -> None:
    inputs, a, b = simple_inputs(batch=2, binary=binary)
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")
    ]
    result = client.infer("simple", inputs, outputs=outputs, request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_version"] == "1"


def test_infer_requested_output_subset_and_order(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = simple_inputs()
    result = client.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


def test_infer_without_id_has_no_id(http: httpx.Client) -> None:
    body = {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    response = http.post("/v2/models/simple/versions/1/infer", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert "id" not in payload
    assert payload["outputs"][0] == {
        "name": "OUTPUT0",
        "datatype": "INT32",
        "shape": [1, 16],
        "data": [2 * i for i in range(16)],
    }


def test_infer_variable_shape(client: httpclient.InferenceServerClient) -> None:
    data = np.linspace(0, 1, 21, dtype=np.float32).reshape(3, 7)
    tensor = httpclient.InferInput("INPUT0", [3, 7], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity_fp32", [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


@pytest.mark.parametrize("binary", [True, False])
def test_infer_bytes(client: httpclient.InferenceServerClient, binary: bool) -> None:
    data = np.array([["héllo".encode()], [b"world"]], dtype=np.object_)
    tensor = httpclient.InferInput("INPUT0", [2, 1], "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
    result = client.infer("bytes_identity", [tensor], outputs=[output])
    expected = [["héllo".encode()], [b"world"]] if binary else [["héllo"], ["world"]]
    assert result.as_numpy("OUTPUT0").tolist() == expected  # the client gives str for JSON


def test_classification_with_labels(client: httpclient.InferenceServerClient) -> None:
    sample = json.loads((EXAMPLES / "digits" / "sample_input.json").read_text())
    data = np.array(sample["inputs"][0]["data"], dtype=np.float32).reshape(2, 64)
    tensor = httpclient.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(data)
    output = httpclient.InferRequestedOutput("probabilities", class_count=2)
    result = client.infer("digits", [tensor], outputs=[output])
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 2)
    value, index, label = top[0][0].decode().split(":")
    assert (index, label) == ("3", "three")
    assert 0.5 < float(value) <= 1.0
    assert top[1][0].decode().endswith(":7:seven")


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_and_response(
    client: httpclient.InferenceServerClient, algorithm: str
) -> None:
    inputs, a, b = simple_inputs()
    result = client.infer(
        "simple",
        inputs,
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_response_is_compressed_when_accepted(http: httpx.Client) -> None:
    body = {
        "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    raw = http.post(
        "/v2/models/identity_fp32/infer", json=body, headers={"Accept-Encoding": "gzip"}
    )
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.json()["outputs"][0]["data"] == [1, 2, 3, 4]  # httpx decompressed it


@pytest.mark.parametrize("model", ["identity_fp32", "no_such_model"])
def test_an_error_answer_is_never_compressed(http: httpx.Client, model: str) -> None:
    # As in Triton: tritonclient's aio client asks for gzip by default but reads an error
    # body as it comes, so a compressed one broke its error handling.
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1]}]}
    raw = http.post(
        f"/v2/models/{model}/infer", json=body, headers={"Accept-Encoding": "gzip, deflate"}
    )
    assert raw.status_code in (400, 404)
    assert "content-encoding" not in raw.headers
    assert raw.json()["error"]


def test_raw_binary_request_body(http: httpx.Client) -> None:
    data = np.arange(5, dtype=np.float32)
    response = http.post(
        "/v2/models/identity_fp32/infer",
        content=data.tobytes(),
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert response.status_code == 200
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:header_length])
    assert header["outputs"][0]["shape"] == [1, 5]
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 20
    np.testing.assert_array_equal(np.frombuffer(response.content[header_length:], np.float32), data)


def test_binary_output_requested_by_parameter(http: httpx.Client) -> None:
    body = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}],
    }
    response = http.post("/v2/models/identity_fp32/infer", json=body)
    assert response.headers["content-type"] == "application/octet-stream"
    header_length = int(response.headers["inference-header-content-length"])
    assert np.frombuffer(response.content[header_length:], np.float32).tolist() == [1.5, 2.5]


# ---- bad input: a clear {"error": ...} and the server keeps serving ------------------------


def _json_error(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    for needle in needles:
        assert needle in message, message


SIMPLE_OK: dict[str, Any] = {
    "inputs": [
        {"name": n, "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}
        for n in ("INPUT0", "INPUT1")
    ]
}


def _simple(**changes: object) -> dict[str, Any]:
    inputs: list[dict[str, Any]] = [dict(i) for i in SIMPLE_OK["inputs"]]
    inputs[0].update(changes)
    return {"inputs": inputs}


BAD_REQUESTS: list[tuple[str, str, Any, int, tuple[str, ...]]] = [
    ("unknown model", "/v2/models/nope/infer", SIMPLE_OK, 404, ("nope",)),
    # The model is looked up before the body is read, as Triton does: the error names the model.
    ("unknown model, malformed body", "/v2/models/nope/infer", b"{}", 404, ("nope",)),
    ("unknown version", "/v2/models/simple/versions/9/infer", SIMPLE_OK, 404, ("version 9",)),
    ("malformed json", "/v2/models/simple/infer", b'{"inputs": [', 400, ("JSON",)),
    (
        "missing input",
        "/v2/models/simple/infer",
        {"inputs": SIMPLE_OK["inputs"][:1]},
        400,
        ("INPUT1",),
    ),
    ("unexpected input", "/v2/models/simple/infer", _simple(name="INPUT9"), 400, ("INPUT9",)),
    (
        "wrong datatype",
        "/v2/models/simple/infer",
        _simple(datatype="FP32", data=[0.5] * 16),
        400,
        ("INPUT0", "FP32", "INT32"),
    ),
    (
        "wrong shape",
        "/v2/models/simple/infer",
        _simple(shape=[1, 8], data=[0] * 8),
        400,
        ("[request id: <id_unknown>] unexpected shape for input 'INPUT0'", "[-1,16]", "NOTE:"),
    ),
    ("data length", "/v2/models/simple/infer", _simple(data=[0] * 15), 400, ("INPUT0",)),
    (
        "batch too large",
        "/v2/models/simple/infer",
        {
            "inputs": [
                {"name": n, "shape": [9, 16], "datatype": "INT32", "data": [0] * 144}
                for n in ("INPUT0", "INPUT1")
            ]
        },
        400,
        ("<= 8",),
    ),
    (
        "unknown output",
        "/v2/models/simple/infer",
        {**SIMPLE_OK, "outputs": [{"name": "X"}]},
        400,
        ("'X'",),
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "needles"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests(
    http: httpx.Client,
    path: str,
    body: dict[str, object] | bytes,
    status: int,
    needles: tuple[str, ...],
) -> None:
    if isinstance(body, bytes):
        response = http.post(path, content=body)
    else:
        response = http.post(path, json=body)
    _json_error(response, status, *needles)
    assert http.get("/v2/health/ready").status_code == 200


def test_binary_header_longer_than_body(http: httpx.Client) -> None:
    response = http.post(
        "/v2/models/simple/infer",
        content=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": "500"},
    )
    _json_error(response, 400)


def test_binary_data_beyond_body(http: httpx.Client) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    response = http.post(
        "/v2/models/identity_fp32/infer",
        content=header + b"\0" * 8,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    _json_error(response, 400, "INPUT0")


def test_corrupt_bytes_prefix(http: httpx.Client) -> None:
    payload = struct.pack("<I", 1000) + b"abc"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(payload)},
                }
            ]
        }
    ).encode()
    response = http.post(
        "/v2/models/bytes_identity/infer",
        content=header + payload,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    _json_error(response, 400, "INPUT0")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_bad_compression(http: httpx.Client, encoding: str) -> None:
    response = http.post(
        "/v2/models/simple/infer", content=b"not compressed", headers={"Content-Encoding": encoding}
    )
    _json_error(response, 400)


def test_gzip_request_body_is_accepted(http: httpx.Client) -> None:
    response = http.post(
        "/v2/models/simple/infer",
        content=gzip.compress(json.dumps(SIMPLE_OK).encode()),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    deflated = http.post(
        "/v2/models/simple/infer",
        content=zlib.compress(json.dumps(SIMPLE_OK).encode()),
        headers={"Content-Encoding": "deflate"},
    )
    assert deflated.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v2/nowhere", 404, "Not Found"),
        ("GET", "/v2/models/simple/versions/abc", 404, "Not Found"),
        ("POST", "/v2/models/simple/versions/abc/infer", 404, "Not Found"),
        ("GET", "/v2/models/simple/infer", 405, "Method Not Allowed"),
        ("POST", "/v2/health/live", 405, "Method Not Allowed"),
        ("DELETE", "/v2", 405, "Method Not Allowed"),
    ],
)
def test_unknown_paths_and_methods(
    http: httpx.Client, method: str, path: str, status: int, message: str
) -> None:
    response = http.request(method, path)
    assert response.status_code == status
    assert response.json() == {"error": message}


def test_tritonclient_raises_with_the_server_message(
    client: httpclient.InferenceServerClient,
) -> None:
    tensor = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(InferenceServerException, match="expects 'INT32'"):
        client.infer("simple", [tensor])


@pytest.mark.parametrize("stack", ["inferd", "uvicorn"])
def test_body_over_limit_is_413(stack: str, server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(
        model_repositories=(EXAMPLES,), http_max_input_size=1024, http_stack=stack
    )
    with httpx.Client(base_url=f"http://{server.http_url}") as http:
        big = {
            "inputs": [
                {"name": "INPUT0", "shape": [1, 1000], "datatype": "FP32", "data": [0.0] * 1000}
            ]
        }
        _json_error(http.post("/v2/models/identity_fp32/infer", json=big), 413, "1024")
        small = {
            "inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]
        }
        assert http.post("/v2/models/identity_fp32/infer", json=small).status_code == 200


def test_backend_failure_is_500_and_next_request_works(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    write_model(tmp_path, "reshape", reshape_model())
    server = server_factory(model_repositories=(tmp_path,))
    with httpx.Client(base_url=f"http://{server.http_url}") as http:

        def call(n: int) -> httpx.Response:
            body = {
                "inputs": [
                    {"name": "INPUT0", "shape": [1, n], "datatype": "FP32", "data": [1.0] * n}
                ]
            }
            return http.post("/v2/models/reshape/infer", json=body)

        _json_error(call(3), 500, "reshape")
        ok = call(8)
        assert ok.status_code == 200
        assert ok.json()["outputs"][0]["shape"] == [2, 4]


def test_http_stack_is_chosen_by_flag_or_environment(
    examples_server: RunningServer, alt_stacks_server: RunningServer
) -> None:
    assert settings_from_args(build_parser({}).parse_args(["serve"])).http_stack == "inferd"
    env = build_parser({"INFERD_HTTP_STACK": "uvicorn"}).parse_args(["serve"])
    assert settings_from_args(env).http_stack == "uvicorn"
    with pytest.raises(SystemExit):  # argparse refuses an unknown stack
        build_parser({}).parse_args(["serve", "--http-stack=hypercorn"])
    # uvicorn names itself in a Server header; inferd's server sends none.
    servers = [
        httpx.get(f"http://{s.http_url}/v2").headers.get("server")
        for s in (examples_server, alt_stacks_server)
    ]
    assert servers == [None, "uvicorn"]


def test_the_default_stacks_never_import_uvicorn() -> None:
    # uvicorn (with click under it) costs a tenth of start-up; only --http-stack=uvicorn needs it.
    probe = "import sys, inferd.server.app, inferd.server.cli; print('uvicorn' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
