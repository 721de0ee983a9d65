"""Decoupled python models (0..n responses per request) through the real tritonclient: the gRPC
stream (sync and aio clients), the refusals of HTTP infer and gRPC ModelInfer, statistics,
unload while requests stream, and perf_analyzer --streaming."""

from __future__ import annotations

import asyncio
import http.client
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpc
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from inferd.server.http_generate import ONE_RESPONSE
from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.decoupled_models import (
    ADD,
    ASYNC_WAITER,
    BLS_DECOUPLED,
    BLS_DECOUPLED_CONFIG,
    COUNTDOWN,
    REPEAT,
    REPEAT_CONFIG,
    SENDER_ANSWERS,
    THREADED_BLS,
    add_config,
    countdown_config,
    ensemble_config,
    step,
)
from tests.models import identity_model, write_model
from tests.perf_analyzer import needs_perf_analyzer, run_perf_analyzer
from tests.python_models import (
    ADD_SUB,
    ADD_SUB_CONFIG,
    IDENTITY_CONFIG,
    SHAPES,
    SHAPES_CONFIG,
    write_python_model,
)

Factory = Callable[..., RunningServer]
ALT_STACKS = {"http_stack": "uvicorn", "grpc_stack": "grpcio"}
UNLOAD_TIMEOUT = (
    'parameters { key: "inferd.decoupled_unload_timeout_s" value: { string_value: "%s" } }'
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("decoupled")
    write_python_model(root, "repeat", REPEAT, REPEAT_CONFIG)
    write_python_model(root, "async_waiter", ASYNC_WAITER, REPEAT_CONFIG)
    write_python_model(root, "repeat_stats", REPEAT, REPEAT_CONFIG)
    write_python_model(root, "sender_answers", SENDER_ANSWERS, IDENTITY_CONFIG)
    write_python_model(root, "add_sub", ADD_SUB, ADD_SUB_CONFIG)
    write_python_model(root, "shapes", SHAPES, SHAPES_CONFIG)
    write_python_model(root, "bls_decoupled", BLS_DECOUPLED, BLS_DECOUPLED_CONFIG)
    write_python_model(root, "threaded_bls", THREADED_BLS, REPEAT_CONFIG)
    write_python_model(root, "add1", ADD, add_config(1, "-1"))
    write_python_model(root, "add100", ADD, add_config(100, "1"))
    repeat = {"IN": "IN", "MODE": "MODE"}
    ensembles = {
        "pipeline": ensemble_config(
            step("add1", {"X": "IN"}, {"Y": "in_plus"})
            + ","
            + step("repeat", {"IN": "in_plus", "MODE": "MODE"}, {"OUT": "each", "IDX": "IDX"})
            + ","
            + step("add100", {"X": "each"}, {"Y": "OUT"})
        ),
        "passthrough": ensemble_config(step("repeat", repeat, {"OUT": "OUT", "IDX": "IDX"})),
        # A decoupled ensemble as the decoupled step of another.
        "nested": ensemble_config(
            step("passthrough", repeat, {"OUT": "each", "IDX": "IDX"})
            + ","
            + step("add100", {"X": "each"}, {"Y": "OUT"})
        ),
    }
    for name, config in ensembles.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
    return root


@pytest.fixture(scope="module", params=["inferd", "alt", "process"])
def server(repo: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """inferd's own HTTP and gRPC stacks, the alternatives (uvicorn, grpc.aio), and inferd's
    stacks with the python models in stub processes."""
    stacks: dict[str, Any] = {
        "inferd": {},
        "alt": ALT_STACKS,
        "process": {"python_isolation": "process"},
    }[request.param]
    running = start_server(replace(TEST_SETTINGS, model_repositories=(repo,), **stacks))
    yield running
    running.stop()


@dataclass
class Answer:
    id: str
    error: str | None = None
    final: bool | None = None  # the triton_final_response parameter
    out: list[int] | None = None
    idx: list[int] | None = None


def repeat_inputs(values: list[int], mode: int) -> list[grpcclient.InferInput]:
    given = grpcclient.InferInput("IN", [len(values)], "INT32")
    given.set_data_from_numpy(np.array(values, np.int32))
    how = grpcclient.InferInput("MODE", [1], "INT32")
    how.set_data_from_numpy(np.array([mode], np.int32))
    return [given, how]


def answer_of(result: Any, error: Any) -> Answer:
    if error is not None:
        return Answer(id="", error=error.message())
    response = result.get_response()
    final = response.parameters.get("triton_final_response")
    answer = Answer(id=response.id, final=None if final is None else final.bool_param)
    if response.outputs:
        answer.out = result.as_numpy("OUT").tolist()
        answer.idx = result.as_numpy("IDX").tolist()
    return answer


class Stream:
    """A tritonclient gRPC stream whose answers are read in arrival order."""

    def __init__(self, server: RunningServer) -> None:
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.answers: queue.Queue[Answer] = queue.Queue()
        self.client.start_stream(
            callback=lambda result, error: self.answers.put(answer_of(result, error))
        )

    def send(
        self,
        model: str,
        values: list[int],
        mode: int,
        rid: str,
        empty_final: bool = False,
        **sequence: Any,
    ) -> None:
        self.client.async_stream_infer(
            model,
            repeat_inputs(values, mode),
            request_id=rid,
            enable_empty_final_response=empty_final,
            **sequence,
        )

    def take(self, count: int) -> list[Answer]:
        return [self.answers.get(timeout=20) for _ in range(count)]

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


@pytest.fixture
def stream(server: RunningServer) -> Iterator[Stream]:
    opened = Stream(server)
    yield opened
    opened.close()


def test_each_value_comes_as_a_response_then_an_empty_final_one(stream: Stream) -> None:
    stream.send("repeat", [10, 20, 30], 0, "r", empty_final=True)
    answers = stream.take(4)
    assert [(a.id, a.out, a.idx, a.final) for a in answers[:3]] == [
        ("r", [10], [0], False),
        ("r", [20], [1], False),
        ("r", [30], [2], False),
    ]
    assert (answers[3].id, answers[3].out, answers[3].final) == ("r", None, True)


def test_without_empty_final_a_final_flag_alone_sends_nothing(stream: Stream) -> None:
    stream.send("repeat", [1, 2], 0, "first")
    stream.send("repeat", [], 6, "only_final")  # only the final flag: nothing at all
    assert [(a.id, a.out) for a in stream.take(2)] == [("first", [1]), ("first", [2])]
    stream.send("repeat", [3], 1, "after")
    assert [(a.id, a.out, a.final) for a in stream.take(1)] == [("after", [3], True)]
    assert stream.answers.empty()


def test_a_final_flag_on_the_last_response_needs_no_empty_response(stream: Stream) -> None:
    stream.send("repeat", [5, 6], 1, "r", empty_final=True)
    assert [(a.out, a.final) for a in stream.take(2)] == [([5], False), ([6], True)]
    stream.send("repeat", [], 6, "zero", empty_final=True)  # zero responses, only FINAL
    [empty] = stream.take(1)
    assert (empty.id, empty.out, empty.final) == ("zero", None, True)
    assert stream.answers.empty()


def test_an_error_response_arrives_in_order_and_the_stream_goes_on(stream: Stream) -> None:
    stream.send("repeat", [1, 2, 3], 2, "e", empty_final=True)
    answers = stream.take(4)
    assert (answers[0].out, answers[0].final) == ([1], False)
    assert answers[1].error == "no value at 1"
    assert (answers[2].out, answers[2].final) == ([3], False)
    assert (answers[3].out, answers[3].final) == (None, True)


def test_error_responses_carry_the_model_name_and_the_final_flag(server: RunningServer) -> None:
    """As in Triton; a request refused before it reached the model gets its id only."""
    request = pb.ModelInferRequest(model_name="repeat", id="raw")
    for name, values in (("IN", [1, 2]), ("MODE", [2])):
        request.inputs.add(name=name, datatype="INT32", shape=[len(values)])
        request.raw_input_contents.append(np.array(values, np.int32).tobytes())
    refused = pb.ModelInferRequest(model_name="repeat", id="bad")
    refused.inputs.add(name="NOPE", datatype="INT32", shape=[1])
    refused.raw_input_contents.append(np.zeros(1, np.int32).tobytes())
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        replies = list(call(iter([refused, request]), timeout=20))
    assert [r.infer_response.id for r in replies] == ["bad", "raw", "raw"]
    assert replies[0].infer_response == pb.ModelInferResponse(id="bad")
    error = replies[2].infer_response
    assert replies[2].error_message == "no value at 1"
    assert (error.model_name, error.id) == ("repeat", "raw")
    assert error.parameters["triton_final_response"].bool_param is False


def test_failed_execute_ends_the_request_with_triton_messages(stream: Stream) -> None:
    stream.send("repeat", [1], 3, "raises", empty_final=True)
    stream.send("repeat", [1], 4, "returns", empty_final=True)
    errors = sorted(a.error or "" for a in stream.take(2))
    prefix = "Failed to process the request(s) for model 'repeat_0_0', message: "
    assert errors == [
        prefix + "Python model 'repeat_0_0' is using the decoupled mode and the execute "
        "function must return None.",
        prefix + "ValueError: execute failed on purpose",
    ]
    stream.send("repeat", [7], 1, "next")  # the stream and the model serve on
    assert [a.out for a in stream.take(1)] == [[7]]


def test_requests_on_one_stream_interleave_each_in_order(stream: Stream) -> None:
    stream.send("repeat", [1, 2, 3], 7, "slow", empty_final=True)
    stream.send("repeat", [4, 5], 0, "quick", empty_final=True)
    answers = stream.take(7)
    by_id: dict[str, list[Answer]] = {}
    for answer in answers:
        by_id.setdefault(answer.id, []).append(answer)
    assert [(a.out, a.final) for a in by_id["slow"]] == [
        ([1], False),
        ([2], False),
        ([3], False),
        (None, True),
    ]
    assert [(a.out, a.final) for a in by_id["quick"]] == [([4], False), ([5], False), (None, True)]
    # Both ran at once: the quick one finished before the slow one's last response.
    assert answers.index(by_id["quick"][-1]) < answers.index(by_id["slow"][-1])


def test_non_decoupled_models_answer_once_on_the_stream_with_the_final_flag(
    server: RunningServer,
) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        given = grpcclient.InferInput("INPUT0", [4], "FP32")
        given.set_data_from_numpy(np.arange(4, dtype=np.float32))
        client.async_stream_infer("sender_answers", [given], request_id="s")
        result, error = answers.get(timeout=20)
        assert error is None
        assert result.as_numpy("OUTPUT0").tolist() == [0, 2, 4, 6]
        assert result.get_response().parameters["triton_final_response"].bool_param
    finally:
        client.stop_stream()
        client.close()
    # Over HTTP the sent response is the answer too.
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        data = httpclient.InferInput("INPUT0", [4], "FP32")
        data.set_data_from_numpy(np.ones(4, np.float32))
        assert http.infer("sender_answers", [data]).as_numpy("OUTPUT0").tolist() == [2] * 4
    finally:
        http.close()


def test_a_client_that_leaves_its_stream_cancels_its_requests(server: RunningServer) -> None:
    def cancelled() -> float:
        text = httpx.get(f"http://{server.http_url}/metrics").text
        for line in text.splitlines():
            if line.startswith('repeat_cancelled{model="repeat"}'):
                return float(line.split()[-1])
        return 0.0

    before = cancelled()
    stream = Stream(server)
    stream.send("repeat", [7], 5, "leaving")  # answers once, then waits for is_cancelled()
    assert stream.take(1)[0].out == [7]
    stream.client.stop_stream(cancel_requests=True)
    stream.client.close()
    deadline = time.monotonic() + 10
    while cancelled() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1


def test_single_answer_apis_refuse_decoupled_models_as_triton_does(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as grpc_error:
        client.infer("repeat", repeat_inputs([1], 0))
    assert grpc_error.value.status() == "StatusCode.UNIMPLEMENTED"
    assert grpc_error.value.message() == (
        "ModelInfer RPC doesn't support models with decoupled transaction policy"
    )
    http = httpclient.InferenceServerClient(server.http_url)
    inputs = []
    for name, value in (("IN", [1]), ("MODE", [0])):
        tensor = httpclient.InferInput(name, [1], "INT32")
        tensor.set_data_from_numpy(np.array(value, np.int32))
        inputs.append(tensor)
    with pytest.raises(InferenceServerException) as http_error:
        http.infer("repeat", inputs)
    assert http_error.value.status() == "501"
    assert http_error.value.message() == (
        "HTTP end point doesn't support models with decoupled transaction policy"
    )
    client.close()
    http.close()


def test_statistics_count_each_decoupled_request_once(server: RunningServer) -> None:
    opened = Stream(server)
    try:
        opened.send("repeat_stats", [1, 2, 3], 0, "a", empty_final=True)
        opened.send("repeat_stats", [4], 1, "b", empty_final=True)
        opened.take(5)
    finally:
        opened.close()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stats = client.get_inference_statistics("repeat_stats", as_json=True)["model_stats"][0]
    client.close()
    inference = stats["inference_stats"]
    assert int(inference["success"]["count"]) == 2
    assert int(stats["inference_count"]) == 2
    assert int(stats["execution_count"]) == 2


def test_the_aio_client_streams_decoupled_responses(server: RunningServer) -> None:
    """The aio client cannot ask for empty final responses: the call ends once the client has
    sent everything and every request sent its final flag."""

    async def run() -> list[tuple[str, list[int] | None, bool]]:
        client = aiogrpc.InferenceServerClient(server.grpc_url)

        async def requests() -> Any:
            for rid, values, mode in (("x", [1, 2], 0), ("y", [3], 1)):
                yield {
                    "model_name": "repeat",
                    "inputs": repeat_inputs(values, mode),
                    "request_id": rid,
                }

        seen: list[tuple[str, list[int] | None, bool]] = []
        try:
            async for result, error in client.stream_infer(requests()):
                assert error is None
                answer = answer_of(result, None)
                seen.append((answer.id, answer.out, bool(answer.final)))
        finally:
            await client.close()
        return seen

    seen = asyncio.run(run())
    assert [s for s in seen if s[0] == "x"] == [("x", [1], False), ("x", [2], False)]
    assert [s for s in seen if s[0] == "y"] == [("y", [3], True)]


# The two schedulers of a decoupled model: REPEAT's config, and the flags of its requests.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dynamic": ("", {}),
    "sequence": (
        "sequence_batching { }\n",
        {"sequence_id": 9, "sequence_start": True, "sequence_end": True},
    ),
}


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_unload_waits_for_streaming_requests(
    tmp_path: Path, server_factory: Factory, scheduler: str, isolation: str
) -> None:
    config, sequence = SCHEDULERS[scheduler]
    write_python_model(tmp_path, "repeat", REPEAT, REPEAT_CONFIG + config)
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="explicit", python_isolation=isolation
    )
    http = httpclient.InferenceServerClient(server.http_url)
    http.load_model("repeat")
    opened = Stream(server)
    try:
        opened.send("repeat", [1, 2, 3, 4], 7, "long", empty_final=True, **sequence)
        first = opened.take(1)
        http.unload_model("repeat")  # returns once the request sent its final response
        rest = opened.take(4)
        assert [a.out for a in first + rest] == [[1], [2], [3], [4], None]
        assert rest[-1].final is True
        assert not http.is_model_ready("repeat")
    finally:
        opened.close()
        http.close()


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_unload_ends_requests_that_never_finish_after_its_bound(
    tmp_path: Path, server_factory: Factory, scheduler: str, isolation: str
) -> None:
    config, sequence = SCHEDULERS[scheduler]
    write_python_model(tmp_path, "stuck", REPEAT, REPEAT_CONFIG + config + UNLOAD_TIMEOUT % "0.2")
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="explicit", python_isolation=isolation
    )
    http = httpclient.InferenceServerClient(server.http_url)
    http.load_model("stuck")
    opened = Stream(server)
    try:
        opened.send("stuck", [9], 5, "stuck", empty_final=True, **sequence)
        assert [a.out for a in opened.take(1)] == [[9]]
        done = threading.Event()

        def unload() -> None:  # HTTP clients stay on the thread that made them
            own = httpclient.InferenceServerClient(server.http_url)
            own.unload_model("stuck")
            own.close()
            done.set()

        threading.Thread(target=unload).start()
        [ended] = opened.take(1)
        assert (
            ended.error == "model 'stuck:1' was unloaded before the request sent its final response"
        )
        assert done.wait(20)
        assert opened.answers.empty()
    finally:
        opened.close()
        http.close()


def test_only_python_models_may_be_decoupled_and_ensembles_need_one_branch(
    tmp_path: Path, server_factory: Factory
) -> None:
    decoupled = "model_transaction_policy { decoupled: true }\n"
    onnx_config = (
        'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
    )
    write_model(tmp_path, "onnx_decoupled", identity_model(), onnx_config + decoupled)
    write_python_model(tmp_path, "repeat", REPEAT, REPEAT_CONFIG)
    sequence = REPEAT_CONFIG + "sequence_batching { }\n"
    write_python_model(tmp_path, "repeat_sequence", REPEAT, sequence)
    write_python_model(tmp_path, "repeat_too", REPEAT, REPEAT_CONFIG)
    write_python_model(tmp_path, "add1", ADD, add_config(1, "-1"))
    repeat = {"IN": "IN", "MODE": "MODE"}
    ensembles = {
        "two_decoupled": ensemble_config(
            step("repeat", repeat, {"OUT": "each", "IDX": "IDX"})
            + ","
            + step("repeat_too", {"IN": "each", "MODE": "MODE"}, {"OUT": "OUT"})
        ),
        "beside": ensemble_config(
            step("repeat", repeat, {"OUT": "OUT", "IDX": "IDX"})
            + ","
            + step("add1", {"X": "IN"}, {"Y": "OTHER"}),
            outputs="OUT OTHER",
        ),
    }
    for name, config in ensembles.items():
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(config)
    server = server_factory(model_repositories=(tmp_path,))
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        index = {e["name"]: e for e in http.get_model_repository_index()}
    finally:
        http.close()
    assert index["repeat"]["state"] == "READY"
    assert index["onnx_decoupled"]["state"] == "UNAVAILABLE"
    assert "not supported by inferd's 'onnxruntime' backend" in index["onnx_decoupled"]["reason"]
    assert index["repeat_sequence"]["state"] == "READY"  # test_decoupled_sequence.py runs one
    assert index["two_decoupled"]["reason"] == (
        "ensemble two_decoupled contains more than one decoupled model (repeat, repeat_too): "
        "inferd streams an ensemble's responses from one decoupled step"
    )
    assert index["beside"]["reason"] == (
        "in ensemble 'beside', output 'OTHER' is written by step 1 (model 'add1'), which does "
        "not come after decoupled step 0 (model 'repeat'): each response of that step makes "
        "one ensemble response"
    )


def post(server: RunningServer, path: str, body: Any) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection(server.http_url, timeout=20)
    try:
        connection.request("POST", path, json.dumps(body).encode())
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        connection.close()


def events(body: bytes) -> list[Any]:
    """The JSON documents of a Server-Sent Events body."""
    chunks = [c for c in body.decode().split("\n\n") if c]
    assert all(c.startswith("data: ") for c in chunks), body
    return [json.loads(c.removeprefix("data: ")) for c in chunks]


def test_generate_answers_flat_json_for_any_model(server: RunningServer) -> None:
    status, kind, body = post(
        server,
        "/v2/models/add_sub/generate",
        {"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1], "note": "a parameter"},
    )
    assert (status, kind) == (200, "application/json")
    assert json.loads(body) == {
        "model_name": "add_sub",
        "model_version": "1",
        "OUTPUT0": [2.0, 3.0, 4.0, 5.0],
        "OUTPUT1": [0.0, 1.0, 2.0, 3.0],
    }
    # In Triton 2.51's order: the outputs first.
    assert list(json.loads(body)) == ["OUTPUT0", "OUTPUT1", "model_name", "model_version"]
    status, _, body = post(server, "/v2/models/repeat/generate", {"IN": [4], "MODE": 1})
    assert status == 200
    assert json.loads(body) == {"model_name": "repeat", "model_version": "1", "OUT": 4, "IDX": 0}
    status, _, body = post(server, "/v2/models/repeat/generate", {"IN": [4, 5], "MODE": 0})
    assert status == 400
    assert json.loads(body) == {"error": ONE_RESPONSE}
    for bad in ([1], {"INPUT0": [[1]], "INPUT1": [1, 1, 1, 1]}, {"INPUT0": 1, "x": {}}):
        status, _, body = post(server, "/v2/models/add_sub/generate", bad)
        assert status == 400 and "error" in json.loads(body), bad


def test_generate_fills_each_inputs_config_dims_as_triton_does(server: RunningServer) -> None:
    body = {
        "A": "hi",  # one element: [1, 1]
        "D": [[1], [2], [3]],  # three elements, each read as /infer reads data
        "F": [1, 2, 3, 4, 5, 6],  # the variable dim takes what [3] leaves over
        "H": list(range(6)),
        "note": 1,
        "parameters": {"max_tokens": 8, "stop": "x"},  # its entries are parameters
    }
    status, _, answer = post(server, "/v2/models/shapes/generate", body)
    assert status == 200, answer
    document = json.loads(answer)
    assert list(document) == ["PARAMS", "SHAPES", "model_name", "model_version"]  # by name
    assert json.loads(document["SHAPES"]) == {"A": [1, 1], "D": [3], "F": [2, 3], "H": [2, 1, 3]}
    assert document["PARAMS"] == '{"note":1,"max_tokens":8,"stop":"x"}'  # Triton's JSON
    invalid_type = "parameter 'p' has invalid type. It should be either 'int', 'bool', or 'string'."
    for bad, message in (
        ({"D": [1, 2]}, "The schema can not convert input 'D' to tensor with proper shape"),
        ({"F": [1, 2]}, "The schema can not convert input 'F' to tensor with proper shape"),
        ({"A": "x", "p": [1]}, invalid_type),
        (
            {"A": "x", "parameters": {"p": None}},
            "Converting keyword: 'parameters': " + invalid_type,
        ),
        ({"A": "x", "parameters": 5}, "Expected JSON object for keyword: 'parameters'"),
        ({"D": [1, "2", 3]}, "input 'D': INT64 'data' elements must be integer values, got string"),
    ):
        status, _, answer = post(server, "/v2/models/shapes/generate", bad)
        assert (status, json.loads(answer)) == (400, {"error": message}), bad
    connection = http.client.HTTPConnection(server.http_url, timeout=20)
    try:
        connection.request("POST", "/v2/models/shapes/generate", b"")
        empty = connection.getresponse()
        assert (empty.status, json.loads(empty.read())) == (
            400,
            {"error": "failed to parse the request JSON buffer: The document is empty."},
        )
    finally:
        connection.close()


def test_generate_stream_sends_each_response_as_an_event(server: RunningServer) -> None:
    status, kind, body = post(
        server, "/v2/models/repeat/generate_stream", {"IN": [1, 2, 3], "MODE": 2}
    )
    assert (status, kind) == (200, "text/event-stream; charset=utf-8")
    assert events(body) == [
        {"model_name": "repeat", "model_version": "1", "OUT": 1, "IDX": 0},
        {"error": "no value at 1"},
        {"model_name": "repeat", "model_version": "1", "OUT": 3, "IDX": 2},
    ]
    status, _, body = post(server, "/v2/models/repeat/generate_stream", {"IN": [1], "MODE": 3})
    assert status == 500  # the first event decides the status
    [error] = events(body)
    assert error["error"].endswith("ValueError: execute failed on purpose")
    status, _, body = post(
        server, "/v2/models/add_sub/generate_stream", {"INPUT0": [1] * 4, "INPUT1": [1] * 4}
    )
    assert status == 200
    assert [e["OUTPUT0"] for e in events(body)] == [[2.0] * 4]


def test_generate_stream_writes_events_as_they_are_sent(server: RunningServer) -> None:
    """The model sends one response, then waits until the request is cancelled: the event
    must reach the client while the request is still open."""
    connection = http.client.HTTPConnection(server.http_url, timeout=20)
    try:
        body = json.dumps({"IN": [8], "MODE": 5}).encode()
        connection.request("POST", "/v2/models/repeat/generate_stream", body)
        response = connection.getresponse()
        assert response.status == 200
        first = b""
        while not first.endswith(b"\n\n"):
            first += response.read1(1024) if hasattr(response, "read1") else response.read(1)
        assert events(first) == [{"model_name": "repeat", "model_version": "1", "OUT": 8, "IDX": 0}]
    finally:
        connection.close()  # the client leaves: the request is cancelled


def test_infer_stream_sends_v2_responses_as_events_for_any_model(server: RunningServer) -> None:
    """MLServer's infer_stream route serves every model: a v2 request in, each response as a
    v2 JSON event (a decoupled model's responses, any other model's one answer)."""
    body = {
        "id": "s1",
        "inputs": [
            {"name": "IN", "shape": [2], "datatype": "INT32", "data": [7, 8]},
            {"name": "MODE", "shape": [1], "datatype": "INT32", "data": [2]},
        ],
    }
    status, kind, answer = post(server, "/v2/models/repeat/infer_stream", body)
    assert (status, kind) == (200, "text/event-stream; charset=utf-8")
    first, error = events(answer)
    assert first["id"] == "s1" and first["model_name"] == "repeat"
    assert {o["name"]: o["data"] for o in first["outputs"]} == {"OUT": [7], "IDX": [0]}
    assert error == {"error": "no value at 1"}
    pair = {"shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    body = {"inputs": [{"name": "INPUT0", **pair}, {"name": "INPUT1", **pair}]}
    status, _, answer = post(server, "/v2/models/add_sub/versions/1/infer_stream", body)
    [only] = events(answer)
    assert status == 200 and only["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    status, kind, answer = post(server, "/v2/models/nowhere/infer_stream", body)
    assert (status, kind) == (404, "application/json")
    assert json.loads(answer) == {"error": "Request for unknown model: 'nowhere' is not found"}
    status, _, answer = post(server, "/v2/models/add_sub/infer_stream", {"inputs": 1})
    assert status == 400 and "error" in json.loads(answer)


@pytest.mark.slow
@needs_perf_analyzer
@pytest.mark.parametrize("model", ["repeat", "pipeline"])
def test_perf_analyzer_streams_a_decoupled_model(
    server: RunningServer, tmp_path: Path, model: str
) -> None:
    data = tmp_path / "data.json"
    data.write_text('{"data": [{"IN": {"content": [1, 2, 3], "shape": [3]}, "MODE": [0]}]}')
    flags = ["--streaming", "--input-data", str(data), "--concurrency-range", "2:2"]
    run_perf_analyzer(model, server.grpc_url, "grpc", *flags, "-p", "500", "-r", "3")


EXECUTE_FAILED = (
    "Failed to process the request(s) for model 'repeat_0_0', message: ValueError: execute "
    "failed on purpose"
)


def bls_seen(server: RunningServer, values: list[int], mode: int, **params: Any) -> Any:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer("bls_decoupled", repeat_inputs(values, mode), parameters=params)
    return json.loads(result.as_numpy("SEEN")[0])


BLS_CASES = {  # name: (IN, MODE, what the calling model sees)
    "final flag alone": ([4, 5, 6], 0, [4, 5, 6, "empty"]),  # an empty last response
    "final on the last": ([4, 5, 6], 1, [4, 5, 6]),
    "error response": ([4, 5, 6], 2, [4, "error: no value at 1", 6, "empty"]),
    "execute raises": ([4], 3, [f"error: {EXECUTE_FAILED}"]),
    "no responses": ([], 0, ["empty"]),
}


@pytest.mark.parametrize("case", BLS_CASES)
def test_bls_reads_a_decoupled_models_responses_as_they_come(
    server: RunningServer, case: str
) -> None:
    values, mode, expected = BLS_CASES[case]
    assert bls_seen(server, values, mode) == [expected]
    both = bls_seen(server, values, mode, **{"async": True})  # two calls at once
    assert both == [expected] * 2


def test_a_plain_bls_call_to_a_decoupled_model_is_refused_in_tritons_words(
    server: RunningServer,
) -> None:
    assert bls_seen(server, [1], 0, target="add_sub", plain=True) == [[2]]
    [[refusal]] = bls_seen(server, [1], 0, plain=True)
    assert refusal == (
        "error: Model repeat - Error when running inference: Model repeat is using the "
        "decoupled. The current BLS request call doesn't support models using the decoupled "
        "transaction policy. Please use 'decoupled=True' argument to the 'exec' or "
        "'async_exec' calls for decoupled models.'"
    )


def test_a_thread_the_model_started_may_call_models(stream: Stream) -> None:
    # As in Triton, whose decoupled models answer from threads of their own (its QA's
    # decoupled_bls_stream): such a thread finds the server too. It used to be refused, and
    # the request never ended.
    stream.send("threaded_bls", [3, 4], 1, "t")
    answers = stream.take(3)
    assert [(a.id, a.out, a.idx) for a in answers] == [
        ("t", [3], [0]),
        ("t", [4], [1]),
        ("t", [2], [2]),
    ]


def test_bls_streams_from_any_model_and_can_cancel(server: RunningServer) -> None:
    assert bls_seen(server, [1], 0, target="add_sub") == [[2]]  # one response, final
    seen = bls_seen(server, [7], 5, cancel_after=1)  # mode 5 sends until cancelled
    assert seen == [[7, "error: the request was cancelled"]]


ADDED = {"pipeline": 101, "passthrough": 0, "nested": 100}  # to each value, by the steps
STEP_ERROR = {  # what an error response of repeat becomes
    "pipeline": "in ensemble 'pipeline', step model 'repeat': ",
    "passthrough": "in ensemble 'passthrough', step model 'repeat': ",
    "nested": "in ensemble 'nested', step model 'passthrough': "
    "in ensemble 'passthrough', step model 'repeat': ",
}


@pytest.mark.parametrize("model", ADDED)
def test_an_ensemble_streams_each_response_of_its_decoupled_step(
    stream: Stream, model: str
) -> None:
    """As Triton's: one ensemble response per response of the decoupled step, after the steps
    that follow it, in the step's pattern of final flags."""
    plus = ADDED[model]
    stream.send(model, [1, 2, 3], 0, "alone", empty_final=True)
    answers = stream.take(4)
    assert sorted((a.idx, a.out, a.final) for a in answers[:3]) == [
        ([0], [1 + plus], False),
        ([1], [2 + plus], False),
        ([2], [3 + plus], False),
    ]
    assert (answers[3].id, answers[3].out, answers[3].final) == ("alone", None, True)
    stream.send(model, [5, 6], 1, "on_last", empty_final=True)
    assert [(a.out, a.final) for a in stream.take(2)][-1] == ([6 + plus], True)
    stream.send(model, [], 0, "none", empty_final=True)
    [empty] = stream.take(1)
    assert (empty.id, empty.out, empty.final) == ("none", None, True)
    # An error response of the step ends the ensemble's request with it, as in Triton: what
    # had not gone out yet (the pipeline's first response, still in its last step) is dropped.
    stream.send(model, [1, 2, 3], 2, "error", empty_final=True)
    answers = []
    while not answers or answers[-1].error is None:
        answers += stream.take(1)
    assert [a.out for a in answers[:-1]] in ([], [[1 + plus]])
    assert answers[-1].error == STEP_ERROR[model] + "no value at 1"
    stream.send(model, [7], 1, "after")
    assert [(a.id, a.out) for a in stream.take(1)] == [("after", [7 + plus])]
    assert stream.answers.empty()


def test_a_decoupled_ensemble_says_so_and_refuses_single_answer_calls(
    server: RunningServer,
) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        config = client.get_model_config("pipeline").config
        assert config.model_transaction_policy.decoupled  # perf_analyzer reads it to stream
        before = client.get_inference_statistics("pipeline").model_stats[0].inference_stats
        with pytest.raises(InferenceServerException, match="ModelInfer RPC doesn't support"):
            client.infer("pipeline", repeat_inputs([1], 1))
    with httpclient.InferenceServerClient(server.http_url) as http:
        assert http.get_model_config("passthrough")["model_transaction_policy"]["decoupled"]
    one = {"shape": [1], "datatype": "INT32", "data": [1]}
    request = {"inputs": [{"name": "IN", **one}, {"name": "MODE", **one}]}
    status, _, body = post(server, "/v2/models/pipeline/infer", request)
    assert (status, json.loads(body)) == (  # Triton 2.51's answer, also for an ensemble
        501,
        {"error": "HTTP end point doesn't support models with decoupled transaction policy"},
    )
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        after = client.get_inference_statistics("pipeline").model_stats[0].inference_stats
    assert after.fail.count == before.fail.count  # refused calls are no failures of it
    # BLS streams through it like through any decoupled model.
    assert bls_seen(server, [4, 5], 1, target="pipeline") == [[105, 106]]


def test_a_request_cancelled_while_queued_does_not_hold_up_the_unload(
    tmp_path: Path, server_factory: Factory
) -> None:
    """It never runs, so no final response would close its stream: it ends when dropped."""
    config = countdown_config(True, "dynamic_batching {}", delay_ms=300) + UNLOAD_TIMEOUT % "60"
    write_python_model(tmp_path, "slow", COUNTDOWN, config)
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="explicit", load_models=("slow",)
    )
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(lambda result, error: answers.put(error or result))
    for request_id in ("running", "queued"):  # the second comes while the first runs
        tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.ones((1, 1), np.int32))
        client.async_stream_infer("slow", [tensor], request_id=request_id)
        time.sleep(0.1)
    client.stop_stream(cancel_requests=True)
    done = threading.Event()

    def unload() -> None:
        own = grpcclient.InferenceServerClient(server.grpc_url)
        own.unload_model("slow")
        done.set()

    threading.Thread(target=unload, daemon=True).start()
    assert done.wait(20), "the unload waited for the cancelled request's stream"
    client.close()


def test_async_execute_calls_overlap_on_one_instance(server: RunningServer) -> None:
    """As in Triton 24.04+: the instance takes its next request while earlier calls await."""
    streams = [Stream(server) for _ in range(3)]
    try:
        for index, opened in enumerate(streams):
            opened.send("async_waiter", [0], 0, f"r{index}")
        answers = [opened.take(1)[0] for opened in streams]
    finally:
        for opened in streams:
            opened.close()
    assert all(a.error is None and a.final for a in answers)
    assert max(a.out[0] for a in answers if a.out) >= 2  # one instance, calls in progress at once


def test_an_overlapped_async_execute_that_fails_ends_its_stream(stream: Stream) -> None:
    stream.send("async_waiter", [0], 1, "raises")
    stream.send("async_waiter", [0], 2, "returns")
    errors = sorted(a.error or "" for a in stream.take(2))
    prefix = "Failed to process the request(s) for model 'async_waiter_0_0', message: "
    assert errors == [
        prefix + "Python model 'async_waiter_0_0' is using the decoupled mode and the execute "
        "function must return None.",
        prefix + "ValueError: failed after waiting",
    ]
