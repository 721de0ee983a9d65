"""The gRPC front door, driven by the real tritonclient.grpc client and by plain grpc stubs.

Tests on `stacks_server` run over both gRPC stacks (inferd's HTTP/2 layer and grpc.aio).
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from inferd.server.app import StartupError
from inferd.server.cli import build_parser, settings_from_args
from inferd.server.grpc_app import MAX_STREAM_INFLIGHT, grpc_settings
from inferd.server.settings import GrpcChannel
from tests.conftest import EXAMPLES, RunningServer
from tests.models import identity_model, reshape_model, write_model

Callback = Callable[[Any, Any], None]


@pytest.fixture(scope="module")
def client(stacks_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(stacks_server.grpc_url)
    yield triton
    triton.close()


@pytest.fixture
def results() -> queue.Queue[tuple[Any, Any]]:
    return queue.Queue()


def collector(results: queue.Queue[tuple[Any, Any]]) -> Callback:
    return lambda result, error: results.put((result, error))


def simple_inputs(batch: int = 1) -> tuple[list[grpcclient.InferInput], np.ndarray, np.ndarray]:
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 3, dtype=np.int32)
    return [tensor("INPUT0", a, "INT32"), tensor("INPUT1", b, "INT32")], a, b


def tensor(name: str, data: np.ndarray, datatype: str) -> grpcclient.InferInput:
    infer_input = grpcclient.InferInput(name, list(data.shape), datatype)
    infer_input.set_data_from_numpy(data)
    return infer_input


# ---- health and metadata -------------------------------------------------------------------


def test_health(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "2")
    assert not client.is_model_ready("no_such_model")


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta.name == "inferd"
    assert meta.version
    assert "classification" in meta.extensions


def test_model_metadata_has_batch_dim(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("simple")
    assert (meta.name, list(meta.versions), meta.platform) == ("simple", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    assert [t.name for t in meta.outputs] == ["OUTPUT0", "OUTPUT1"]
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("no_such_model")
    assert error.value.status() == "StatusCode.NOT_FOUND"


def test_model_config(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config("digits").config
    assert (config.name, config.max_batch_size) == ("digits", 32)
    assert config.output[0].label_filename == "labels.txt"
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert client.get_model_config("digits", "1").config == config


def test_repository_index(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [
        ("bytes_identity", "1", "READY"),
        ("digits", "1", "READY"),
        ("identity_fp32", "1", "READY"),
        ("simple", "1", "READY"),
    ]


# ---- inference -----------------------------------------------------------------------------


def test_infer_simple(client: grpcclient.InferenceServerClient) -> None:
    inputs, a, b = simple_inputs(batch=2)
    result = client.infer("simple", inputs, request_id="r-1")
    assert result.get_response().id == "r-1"
    assert result.get_response().model_version == "1"
    assert (result.as_numpy("OUTPUT0") == a + b).all()
    assert (result.as_numpy("OUTPUT1") == a - b).all()


def test_infer_requested_output_subset(client: grpcclient.InferenceServerClient) -> None:
    inputs, a, b = simple_inputs()
    outputs = [grpcclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", inputs, outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert (result.as_numpy("OUTPUT1") == a - b).all()
    assert result.get_response().id == ""


@pytest.mark.parametrize("shape", [(1, 5), (3, 7)])
def test_infer_variable_shape(
    client: grpcclient.InferenceServerClient, shape: tuple[int, int]
) -> None:
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    result = client.infer("identity_fp32", [tensor("INPUT0", data, "FP32")])
    assert np.array_equal(result.as_numpy("OUTPUT0"), data)


def test_infer_bytes(client: grpcclient.InferenceServerClient) -> None:
    data = np.array([["héllo".encode()], [b""]], dtype=np.object_)
    result = client.infer("bytes_identity", [tensor("INPUT0", data, "BYTES")])
    assert result.as_numpy("OUTPUT0").tolist() == data.tolist()


def test_classification_with_labels(client: grpcclient.InferenceServerClient) -> None:
    sample = json.loads((EXAMPLES / "digits" / "sample_input.json").read_text())
    data = np.array(sample["inputs"][0]["data"], dtype=np.float32).reshape(2, 64)
    output = grpcclient.InferRequestedOutput("probabilities", class_count=2)
    result = client.infer("digits", [tensor("input", data, "FP32")], outputs=[output])
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 2)
    value, index, label = top[0][0].decode().split(":")
    assert (index, label) == ("3", "three")
    assert 0.5 < float(value) <= 1.0
    assert top[1][0].decode().endswith(":7:seven")


def test_async_infer(
    client: grpcclient.InferenceServerClient, results: queue.Queue[tuple[Any, Any]]
) -> None:
    inputs, a, b = simple_inputs()
    client.async_infer("simple", inputs, collector(results), request_id="async")
    result, error = results.get(timeout=10)
    assert error is None
    assert result.get_response().id == "async"
    assert (result.as_numpy("OUTPUT0") == a + b).all()


def test_stream_many_requests_and_a_bad_one(
    client: grpcclient.InferenceServerClient, results: queue.Queue[tuple[Any, Any]]
) -> None:
    client.start_stream(collector(results))
    try:
        sent: dict[str, np.ndarray] = {}
        for i in range(6):
            inputs, a, b = simple_inputs(batch=1 + i % 3)
            client.async_stream_infer("simple", inputs, request_id=f"ok-{i}")
            sent[f"ok-{i}"] = a + b
            if i == 2:
                bad, _, _ = simple_inputs(batch=9)  # over max_batch_size: fails alone
                client.async_stream_infer("simple", bad, request_id="bad")
        answers = [results.get(timeout=10) for _ in range(len(sent) + 1)]
        errors = [error for _, error in answers if error is not None]
        assert [e.message() for e in errors] == [
            "[request id: bad] inference request batch-size must be <= 8 for 'simple'"
        ]
        got = {r.get_response().id: r.as_numpy("OUTPUT0") for r, e in answers if e is None}
        assert got.keys() == sent.keys()
        assert all((got[key] == sent[key]).all() for key in sent)
        # The stream is still open after the error.
        inputs, a, b = simple_inputs()
        client.async_stream_infer("simple", inputs, request_id="after")
        result, error = results.get(timeout=10)
        assert error is None
        assert result.get_response().id == "after"
    finally:
        client.stop_stream()


HELD_CONFIG = """
name: "held"
backend: "onnxruntime"
max_batch_size: 1024
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { preferred_batch_size: [ 1024 ] max_queue_delay_microseconds: 1000000 }
"""


def pending_requests(server: RunningServer, model: str) -> float:
    text = httpx.get(f"http://{server.http_url}/metrics").text
    prefix = f'nv_inference_pending_request_count{{model="{model}",version="1"}} '
    return next(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("stack", ["inferd", "grpcio"])
def test_a_stream_has_at_most_max_inflight_requests_in_progress(
    tmp_path: Path, server_factory: Callable[..., RunningServer], stack: str
) -> None:
    write_model(tmp_path, "held", identity_model(), HELD_CONFIG)
    server = server_factory(model_repositories=(tmp_path,), grpc_stack=stack)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(collector(results))
    try:
        data = np.ones((1, 4), np.float32)
        total = MAX_STREAM_INFLIGHT + 50
        for i in range(total):  # requests wait up to a second in the queue for a full batch
            client.async_stream_infer("held", [tensor("INPUT0", data, "FP32")], request_id=str(i))
        deadline = time.monotonic() + 0.8
        while pending_requests(server, "held") < MAX_STREAM_INFLIGHT:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.1)
        assert pending_requests(server, "held") == MAX_STREAM_INFLIGHT  # the rest wait unread
        answers = [results.get(timeout=10) for _ in range(total)]  # nothing was lost
        assert all(error is None for _, error in answers)
        assert sorted(int(result.get_response().id) for result, _ in answers) == list(range(total))
    finally:
        client.stop_stream()
        client.close()


async def test_stream_error_keeps_only_the_id(stacks_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(stacks_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer()
        request = pb.ModelInferRequest(model_name="no_such_model", id="x-1")
        request.inputs.add(name="INPUT0", datatype="INT32", shape=[1]).contents.int_contents.append(
            1
        )
        await call.write(request)
        await call.done_writing()
        replies = [reply async for reply in call]
    assert len(replies) == 1
    assert replies[0].error_message == "Request for unknown model: 'no_such_model' is not found"
    assert replies[0].infer_response == pb.ModelInferResponse(id="x-1")


# ---- plain gRPC: KServe field subset, health, reflection, sizes ----------------------------


async def test_kserve_subset_with_plain_stub(stacks_server: RunningServer) -> None:
    """Only the fields KServe's own grpc_predict_v2.proto has: raw contents in, raw out."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    request = pb.ModelInferRequest(model_name="simple", model_version="1", id="k")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(a.tobytes())
    async with grpc.aio.insecure_channel(stacks_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="simple"))).ready
        response = await stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert list(response.outputs[0].shape) == [1, 16]
    assert (
        np.frombuffer(response.raw_output_contents[0], np.int32).tolist()
        == (2 * a).ravel().tolist()
    )
    assert (response.id, response.model_name) == ("k", "simple")


async def test_unknown_model_is_named_before_the_request_is_checked(
    stacks_server: RunningServer,
) -> None:
    request = pb.ModelInferRequest(model_name="nope")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])  # and no contents
    async with grpc.aio.insecure_channel(stacks_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ModelInfer(request)
    assert error.value.code() is grpc.StatusCode.NOT_FOUND
    assert "'nope'" in (error.value.details() or "")


async def test_health_service(stacks_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(stacks_server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "inference.GRPCInferenceService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == serving
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert error.value.code() is grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == serving
        watch.cancel()


async def test_reflection_lists_services(stacks_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(stacks_server.grpc_url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
    names = {s.name for s in reply.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_large_messages_pass(client: grpcclient.InferenceServerClient) -> None:
    data = np.arange(1_000_000, dtype=np.float32).reshape(1, -1)  # 4 MB each way
    result = client.infer("identity_fp32", [tensor("INPUT0", data, "FP32")])
    assert np.array_equal(result.as_numpy("OUTPUT0"), data)


@pytest.mark.parametrize("stack", ["inferd", "grpcio"])
def test_message_limit_and_backend_failure(
    tmp_path: Path, server_factory: Callable[..., RunningServer], stack: str
) -> None:
    write_model(tmp_path, "reshape", reshape_model())
    server = server_factory(
        model_repositories=(tmp_path,),
        grpc_channel=GrpcChannel(max_message_size=1 << 20),
        grpc_stack=stack,
    )
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        big = np.zeros((1, 1 << 19), dtype=np.float32)  # 2 MiB > 1 MiB
        with pytest.raises(InferenceServerException) as error:
            client.infer("reshape", [tensor("INPUT0", big, "FP32")])
        assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        # A model that fails while executing: INTERNAL, with the backend's reason.
        with pytest.raises(InferenceServerException) as error:
            client.infer("reshape", [tensor("INPUT0", np.ones((1, 3), np.float32), "FP32")])
        assert error.value.status() == "StatusCode.INTERNAL"
        assert "reshape" in error.value.message()
        ok = client.infer("reshape", [tensor("INPUT0", np.ones((1, 8), np.float32), "FP32")])
        assert ok.as_numpy("OUTPUT0").shape == (2, 4)
    finally:
        client.close()


# ---- settings ------------------------------------------------------------------------------


def test_grpc_flags_and_environment_become_channel_options() -> None:
    parser = build_parser({"INFERD_GRPC_MAX_MESSAGE_SIZE": "1048576"})
    args = parser.parse_args(
        [
            "serve",
            "--grpc-keepalive-time=10000",
            "--grpc-keepalive-permit-without-calls=true",
            "--grpc-http2-max-ping-strikes=0",
            "--grpc-max-concurrent-streams=64",
        ]
    )
    options = dict(grpc_settings(settings_from_args(args)).channel.options())
    assert options["grpc.max_receive_message_length"] == 1 << 20
    assert options["grpc.max_send_message_length"] == 1 << 20
    assert options["grpc.keepalive_time_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_ping_strikes"] == 0
    assert options["grpc.max_concurrent_streams"] == 64
    assert "grpc.max_connection_age_ms" not in options  # 0 = unset: unlimited


@pytest.mark.parametrize("stack", ["inferd", "grpcio"])
def test_a_taken_grpc_port_fails_start_up(
    examples_server: RunningServer, server_factory: Callable[..., RunningServer], stack: str
) -> None:
    taken = examples_server.app.grpc_port
    with pytest.raises(StartupError, match=f"cannot bind gRPC to 127.0.0.1:{taken}"):
        server_factory(model_repositories=(EXAMPLES,), grpc_port=taken, grpc_stack=stack)


def test_grpc_stack_is_chosen_by_flag_or_environment() -> None:
    default = settings_from_args(build_parser({}).parse_args(["serve"]))
    assert grpc_settings(default).stack == "inferd"
    env = build_parser({"INFERD_GRPC_STACK": "grpcio"}).parse_args(["serve"])
    assert grpc_settings(settings_from_args(env)).stack == "grpcio"
    with pytest.raises(SystemExit):  # argparse refuses an unknown stack
        build_parser({}).parse_args(["serve", "--grpc-stack=h2o"])


def test_model_statistics_match_http(
    client: grpcclient.InferenceServerClient, stacks_server: RunningServer
) -> None:
    a = np.ones((1, 16), np.int32)
    inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    client.infer("simple", inputs)
    stats = client.get_inference_statistics("simple").model_stats
    assert [(m.name, m.version) for m in stats] == [("simple", "1")]
    with httpx.Client(base_url=f"http://{stacks_server.http_url}") as http:
        over_http = http.get("/v2/models/simple/stats").json()["model_stats"][0]
    assert stats[0].inference_count == over_http["inference_count"] >= 1
    assert (
        stats[0].inference_stats.success.count == over_http["inference_stats"]["success"]["count"]
    )
    assert stats[0].inference_stats.queue.ns == over_http["inference_stats"]["queue"]["ns"]
    assert [b.batch_size for b in stats[0].batch_stats] == [
        b["batch_size"] for b in over_http["batch_stats"]
    ]
    every = client.get_inference_statistics().model_stats
    assert {m.name for m in every} == {"bytes_identity", "digits", "identity_fp32", "simple"}
    with pytest.raises(InferenceServerException) as error:
        client.get_inference_statistics("no_such_model")
    # Triton 2.51's answer for the statistics of a model it never had.
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.value.message() == "requested model 'no_such_model' is not available"
    # ... and of a version it does not have, or of version 1 of a model it never had.
    with pytest.raises(InferenceServerException) as error:
        client.get_inference_statistics("simple", "3")
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.value.message() == "requested model version is not available for model 'simple'"
    assert [m.version for m in client.get_inference_statistics("simple", "1").model_stats] == ["1"]
    with pytest.raises(InferenceServerException, match="'no_such_model' is not available"):
        client.get_inference_statistics("no_such_model", "1")
