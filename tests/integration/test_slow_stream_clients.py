"""A client that reads a decoupled model's stream slower than the model answers: the answers
wait in the server up to --stream-buffer-byte-size, then the stream ends with an error the
client reads, the rest is dropped and the request cancelled, instead of the server's memory
filling up. A real gRPC client that reads nothing, and an HTTP generate_stream client alike."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.conftest import RunningServer
from tests.python_models import write_python_model

Factory = Callable[..., RunningServer]

# Sends COUNT responses of SIZE floats each, unless the request is cancelled; then writes how
# many it sent, and whether it saw the cancellation, to the file the `report` parameter names.
FLOOD = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.report = config["parameters"]["report"]["string_value"]

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0])
            size = int(pb_utils.get_input_tensor_by_name(request, "SIZE").as_numpy()[0])
            sent, cancelled = 0, False
            while sent < count:
                if request.is_cancelled():
                    cancelled = True
                    break
                tensor = pb_utils.Tensor("OUT", np.zeros(size, np.float32))
                sender.send(pb_utils.InferenceResponse([tensor]))
                sent += 1
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            with open(self.report, "w") as report:
                json.dump({"sent": sent, "cancelled": cancelled}, report)
        return None
"""

FLOOD_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "SIZE" data_type: TYPE_INT32 dims: [ 1 ] }
]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }]
parameters { key: "report" value: { string_value: "REPORT" } }
"""

COUNT = 64  # responses of 1 MiB: far more than the client's and the server's buffers
SIZE = 256 * 1024  # floats
LIMIT = 8 * 1024 * 1024


@pytest.fixture
def flood(server_factory: Factory, tmp_path: Path) -> tuple[RunningServer, Path]:
    report = tmp_path / "report.json"
    repo = tmp_path / "repo"
    write_python_model(repo, "flood", FLOOD, FLOOD_CONFIG.replace("REPORT", str(report)))
    return server_factory(model_repositories=(repo,), stream_buffer_bytes=LIMIT), report


def wait_for(report: Path) -> dict[str, object]:
    """The model's report, once it has stopped sending (bounded: the test fails past it). It
    stops early when it sees the cancellation; on a busy machine it may have sent everything
    before the server read its first responses, which the server then drops."""
    for _ in range(600):
        if report.exists() and report.read_text():
            loaded: dict[str, object] = json.loads(report.read_text())
            return loaded
        time.sleep(0.05)
    raise AssertionError("the model never stopped sending")


def test_a_grpc_stream_that_is_not_read_ends_with_resource_exhausted(
    flood: tuple[RunningServer, Path],
) -> None:
    server, report = flood
    request = pb.ModelInferRequest(model_name="flood")
    for name, value in (("COUNT", COUNT), ("SIZE", SIZE)):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1])
        tensor.contents.int_contents.append(value)
    # gRPC's own window probing would otherwise let this client take in most of the stream
    # unasked: it reads nothing only while its windows stay at their initial 64 KiB.
    options = [("grpc.max_receive_message_length", -1), ("grpc.http2.bdp_probe", 0)]
    channel = grpc.insecure_channel(server.grpc_url, options=options)
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answers = stub.ModelStreamInfer(iter([request]))
        wait_for(report)  # the model is done sending; the client has read nothing so far
        received = 0
        with pytest.raises(grpc.RpcError) as raised:
            for _ in answers:
                received += 1
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "reads the stream's responses too slowly" in str(raised.value.details())
        assert received < COUNT
    finally:
        channel.close()


def test_an_http_event_stream_that_is_not_read_ends_with_an_error_event(
    flood: tuple[RunningServer, Path],
) -> None:
    server, report = flood
    host, port = server.http_url.split(":")
    body = json.dumps({"COUNT": [COUNT], "SIZE": [SIZE]}).encode()
    with socket.create_connection((host, int(port))) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.sendall(
            b"POST /v2/models/flood/generate_stream HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        wait_for(report)  # the model is done sending; nothing read yet
        client.settimeout(30)
        received = b""
        while chunk := client.recv(1 << 20):
            received += chunk
            if received.endswith(b"0\r\n\r\n"):  # the chunked body's end
                break
    assert b"reads the stream's responses too slowly" in received[-4096:]
