"""MLServer's streaming (`predict_stream()`): REST infer_stream and generate_stream as
Server-Sent Events, and gRPC ModelStreamInfer through the real tritonclient; and the headers
MLServer hands its models and sends back. On both HTTP stacks and with the models in stub
processes, with the real mlserver package."""

from __future__ import annotations

import http.client
import importlib.util
import json
import queue
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.integration.test_decoupled import events, post
from tests.integration.test_mlserver_models import write_model
from tests.wire import infer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlserver") is None, reason="mlserver is not installed"
)

RUNTIME = """
import asyncio
import json

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceResponse


def text_of(payload):
    return StringCodec.decode_input(payload.inputs[0])[0]


class Words(MLModel):
    '''predict() answers the text; predict_stream() each of its words as a response. "fail"
    fails before any response; a text ending in "!" fails after its words.'''

    async def predict(self, payload):
        words = StringCodec.encode_output("word", [text_of(payload)])
        return InferenceResponse(model_name=self.name, outputs=[words])

    async def predict_stream(self, payloads):
        async for payload in payloads:
            text = text_of(payload)
            if text == "fail":
                raise InferenceError("nothing to say")
            for index, word in enumerate(text.split()):
                words = StringCodec.encode_output("word", [word])
                yield InferenceResponse(
                    model_name=self.name, parameters={"index": index}, outputs=[words]
                )
            if text.endswith("!"):
                raise ValueError("too loud")


class Rows(MLModel):
    '''MLModel's own predict_stream(): predict()'s answer, the rows it was handed.'''

    async def predict(self, payload):
        rows = np.array([payload.inputs[0].shape[0]], dtype=np.int64)
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("rows", rows)]
        )


class Seen(MLModel):
    '''What reached predict(): a header and the input's content type, as JSON; the answer
    carries a header of its own.'''

    async def predict(self, payload):
        headers = payload.parameters.headers or {}
        tensor = payload.inputs[0]
        seen = {
            "id": payload.id,
            "tenant": headers.get("x-tenant"),
            "ce_type": headers.get("Ce-Type"),
            "content_type": tensor.parameters.content_type if tensor.parameters else None,
        }
        return InferenceResponse(
            model_name=self.name,
            parameters={"headers": {"X-Answered-By": "seen"}},
            outputs=[StringCodec.encode_output("seen", [json.dumps(seen)])],
        )


class Forever(MLModel):
    '''Streams a count every 20 ms until its client leaves; predict() answers the count.'''

    async def load(self):
        self.sent = 0
        return True

    def count(self):
        return NumpyCodec.encode_output("sent", np.array([self.sent], dtype=np.int64))

    async def predict(self, payload):
        return InferenceResponse(model_name=self.name, outputs=[self.count()])

    async def predict_stream(self, payloads):
        async for _ in payloads:
            break
        while True:
            self.sent += 1
            yield InferenceResponse(model_name=self.name, outputs=[self.count()])
            await asyncio.sleep(0.02)
"""


def text_request(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}],
        **extra,
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mlserver_streams")
    (root / "stream_runtime.py").write_text(RUNTIME)
    write_model(root, "words", {"implementation": "stream_runtime.Words"})
    batching = {"max_batch_size": 4, "max_batch_time": 0.01}
    write_model(root, "rows", {"implementation": "stream_runtime.Rows", **batching})
    write_model(root, "forever", {"implementation": "stream_runtime.Forever"})
    write_model(root, "seen", {"implementation": "stream_runtime.Seen"})
    return root


@pytest.fixture(scope="module", params=["inferd", "alt", "process"])
def server(repository: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """inferd's HTTP and gRPC stacks, uvicorn and grpc.aio, and inferd's with the models in
    stub processes."""
    options: dict[str, Any] = {
        "inferd": {},
        "alt": {"http_stack": "uvicorn", "grpc_stack": "grpcio"},
        "process": {"mlserver_isolation": "process"},
    }[request.param]
    running = start_server(replace(TEST_SETTINGS, model_repositories=(repository,), **options))
    yield running
    running.stop()


def test_each_response_of_predict_stream_is_an_event(server: RunningServer) -> None:
    """As MLServer's infer_stream, and its generate_stream, the same: a v2 request in, each
    response a v2 JSON event, with the request's id and the response's parameters."""
    for path in ("words/infer_stream", "words/generate_stream", "words/versions/1/infer_stream"):
        status, kind, body = post(server, f"/v2/models/{path}", text_request("a b c", id="w1"))
        assert (status, kind) == (200, "text/event-stream; charset=utf-8"), path
        answers = events(body)
        assert [a["outputs"][0]["data"] for a in answers] == [["a"], ["b"], ["c"]]
        assert [a["parameters"]["index"] for a in answers] == [0, 1, 2]
        # The answer's CloudEvents headers, in each event, as MLServer sends them there.
        for answer in answers:
            headers = answer["parameters"]["headers"]
            assert headers["Ce-Type"] == "io.seldon.serving.inference.response", headers
            assert headers["Ce-Id"] == headers["Ce-Requestid"] == "w1", headers
            assert headers["Ce-Modelid"] == "words", headers
        assert all(a["outputs"][0]["parameters"] == {"content_type": "str"} for a in answers)
        assert {(a["id"], a["model_name"]) for a in answers} == {("w1", "words")}
    # The single-answer routes still call predict().
    status, _, body = post(server, "/v2/models/words/infer", text_request("a b c"))
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == ["a b c"]


def test_a_failure_ends_the_stream_with_an_error_event(server: RunningServer) -> None:
    # Before any response: the first event decides the status (MLServer's InferenceError: 400).
    status, _, body = post(server, "/v2/models/words/infer_stream", text_request("fail"))
    assert status == 400
    assert events(body) == [{"error": "model 'words' failed: InferenceError: nothing to say"}]
    # After some: those are sent, then the error.
    status, _, body = post(server, "/v2/models/words/infer_stream", text_request("hey you!"))
    *answers, error = events(body)
    assert status == 200 and [a["outputs"][0]["data"] for a in answers] == [["hey"], ["you!"]]
    assert error == {"error": "model 'words' failed: ValueError: too loud"}


def test_mlmodels_own_predict_stream_is_predicts_one_answer(server: RunningServer) -> None:
    body = {"inputs": [{"name": "x", "shape": [3, 1], "datatype": "FP32", "data": [1, 2, 3]}]}
    status, _, answer = post(server, "/v2/models/rows/generate_stream", body)
    [only] = events(answer)
    assert status == 200 and only["outputs"][0]["data"] == [3]


def test_the_grpc_stream_calls_predict_stream(server: RunningServer) -> None:
    """ModelStreamInfer through tritonclient: a response per word, then the final flag (an
    empty response when asked for); a model without its own predict_stream answers once,
    with the final flag on that answer."""
    answers: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(lambda result, error: answers.put(error or result.get_response()))
        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"one two"], dtype=object))
        client.async_stream_infer(
            "words", [text], request_id="g1", enable_empty_final_response=True
        )
        x = grpcclient.InferInput("x", [2, 1], "FP32")
        x.set_data_from_numpy(np.ones((2, 1), np.float32))
        client.async_stream_infer("rows", [x], request_id="g2")
        got = [answers.get(timeout=20) for _ in range(4)]
    finally:
        client.stop_stream()
        client.close()
    words = [a for a in got if a.id == "g1"]
    final = [a.parameters["triton_final_response"].bool_param for a in words]
    assert [len(a.outputs) for a in words] == [1, 1, 0] and final == [False, False, True]
    assert [a.raw_output_contents[0][4:] for a in words[:2]] == [b"one", b"two"]
    [rows] = [a for a in got if a.id == "g2"]
    assert rows.parameters["triton_final_response"].bool_param
    assert np.frombuffer(rows.raw_output_contents[0], np.int64).tolist() == [2]


def test_a_client_that_leaves_stops_the_model(server: RunningServer) -> None:
    """The model streams until its client leaves; it is stopped at its next response, and its
    instance serves the next request."""
    connection = http.client.HTTPConnection(server.http_url, timeout=20)
    try:
        connection.request("POST", "/v2/models/forever/infer_stream", json.dumps(text_request("")))
        response = connection.getresponse()
        assert response.status == 200
        read = b""
        while read.count(b"\n\n") < 2:
            read += response.read1(1024)
    finally:
        connection.close()
    deadline = time.monotonic() + 20
    counts = [-1]
    while time.monotonic() < deadline:  # stopped: the count settles
        time.sleep(0.2)
        answer = infer(server, "http", "forever", {"x": np.ones(1, np.float32)})
        counts.append(int(answer["sent"].ravel()[0]))
        if counts[-1] == counts[-2]:
            break
    assert counts[-1] == counts[-2] >= 2, counts


def test_the_requests_headers_reach_the_model_and_its_answers_headers_the_client(
    server: RunningServer,
) -> None:
    """As in MLServer: the request's headers (gRPC: its metadata) in `parameters.headers`,
    with MLServer's CloudEvents ones, and an id made up for a request without one; the
    answer's `parameters.headers` and CloudEvents ones as the HTTP answer's headers. Each
    input's own parameters reach the model too, in a stub process as well."""
    body = {
        "inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"],
             "parameters": {"content_type": "str"}},
        ]
    }  # fmt: skip
    answer = httpx.post(
        f"http://{server.http_url}/v2/models/seen/infer",
        json=body,
        headers={"X-Tenant": "t1"},
        timeout=10,
    )
    assert answer.headers["x-answered-by"] == "seen"
    assert "headers" not in answer.json().get("parameters", {})
    seen = json.loads(answer.json()["outputs"][0]["data"][0])
    made_up = answer.json()["id"]
    assert seen == {
        "id": made_up,
        "tenant": "t1",
        "ce_type": "io.seldon.serving.inference.request",
        "content_type": "str",
    }
    assert str(uuid.UUID(made_up)) == made_up
    ce = {k: v for k, v in answer.headers.items() if k.startswith("ce-")}
    assert ce == {
        "ce-specversion": "0.3",
        "ce-source": "io.seldon.serving.deployment.inferd",
        "ce-type": "io.seldon.serving.inference.response",
        "ce-modelid": "seen",
        "ce-inferenceservicename": "inferd",
        "ce-endpoint": "seen",
        "ce-id": made_up,
        "ce-requestid": made_up,
    }
    given = httpx.post(
        f"http://{server.http_url}/v2/models/seen/infer", json={**body, "id": "r-9"}, timeout=10
    )
    assert given.json()["id"] == given.headers["ce-id"] == "r-9"
    # A stream's events carry the model's headers and the CloudEvents ones in themselves.
    _, _, streamed = post(server, "/v2/models/seen/infer_stream", {**body, "id": "s-1"})
    [event] = events(streamed)
    assert event["parameters"]["headers"]["X-Answered-By"] == "seen"
    assert event["parameters"]["headers"]["Ce-Id"] == "s-1"
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"hi"], dtype=object))
        result = client.infer("seen", [text], headers={"x-tenant": "t2"})
    finally:
        client.close()
    assert json.loads(result.as_numpy("seen").ravel()[0])["tenant"] == "t2"
    # gRPC: the answer's headers are its trailing metadata, as MLServer sends them.
    request = service_pb2.ModelInferRequest(model_name="seen", id="g-3")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"hi")
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, call = stub.ModelInfer.with_call(request)
    trailing = dict(call.trailing_metadata())
    assert trailing["x-answered-by"] == "seen"
    assert trailing["ce-id"] == trailing["ce-requestid"] == "g-3"
    assert trailing["ce-type"] == "io.seldon.serving.inference.response"
