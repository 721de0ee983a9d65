"""A decoupled stateful model (`sequence_batching` with `decoupled: true`, as Triton 2.51 runs
it) through the real tritonclient: sequences interleaved on one gRPC stream, each request's
responses streamed in order while the sequence batcher keeps the sequences' order and slots;
the single-answer APIs refused; implicit state refused at load; perf_analyzer --streaming
with sequences."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer
from tests.decoupled_models import COUNTING_SEQUENCE, COUNTING_SEQUENCE_CONFIG
from tests.perf_analyzer import needs_perf_analyzer, run_perf_analyzer
from tests.python_models import write_python_model

Factory = Callable[..., RunningServer]
# inferd's gRPC stack, grpc.aio, and inferd's with the models in stub processes.
STACKS: dict[str, dict[str, str]] = {
    "inferd": {},
    "alt": {"grpc_stack": "grpcio"},
    "process": {"python_isolation": "process"},
}
STATE = """
sequence_batching {
  control_input [
    { name: "START" control [{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }] },
    { name: "READY" control [{ kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }] },
    { name: "CORRID" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }] }
  ]
  state [{ input_name: "S_IN" output_name: "S_OUT" data_type: TYPE_INT32 dims: [ 1 ] }]
}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_python_model(tmp_path, "counting", COUNTING_SEQUENCE, COUNTING_SEQUENCE_CONFIG)
    stateful = COUNTING_SEQUENCE_CONFIG[: COUNTING_SEQUENCE_CONFIG.index("sequence_batching")]
    write_python_model(tmp_path, "with_state", COUNTING_SEQUENCE, stateful + STATE)
    return tmp_path


def counts(n: int) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("IN", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.full((1, 1), n, np.int32))
    return [tensor]


class Stream:
    """One gRPC stream of the sync client; answers by request id, final flags included."""

    def __init__(self, server: RunningServer) -> None:
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.answers: queue.Queue[Any] = queue.Queue()
        self.client.start_stream(lambda result, error: self.answers.put(error or result))

    def send(self, request_id: str, n: int, sequence: int, **flags: bool) -> None:
        self.client.async_stream_infer(
            "counting",
            counts(n),
            request_id=request_id,
            sequence_id=sequence,
            enable_empty_final_response=True,
            **flags,
        )

    def collect(self, requests: int) -> dict[str, list[list[int]]]:
        """Each request's responses until `requests` final flags came."""
        found: dict[str, list[list[int]]] = {}
        finals = 0
        while finals < requests:
            answer = self.answers.get(timeout=30)
            assert not isinstance(answer, Exception), answer
            response = answer.get_response()
            outputs = found.setdefault(response.id, [])
            if response.parameters["triton_final_response"].bool_param:
                finals += 1
            out = answer.as_numpy("OUT")
            if out is not None:
                outputs.append(out.ravel().tolist())
        return found

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


@pytest.fixture(params=STACKS)
def stream(request: pytest.FixtureRequest, server_factory: Factory, repo: Path) -> Iterator[Stream]:
    server = server_factory(model_repositories=(repo,), **STACKS[request.param])
    opened = Stream(server)
    yield opened
    opened.close()


def test_interleaved_sequences_stream_their_responses_in_order(stream: Stream) -> None:
    stream.send("7-0", 2, 7, sequence_start=True)
    stream.send("8-0", 1, 8, sequence_start=True)
    stream.send("7-1", 3, 7)
    stream.send("8-1", 1, 8, sequence_end=True)
    stream.send("7-2", 1, 7, sequence_end=True)
    stream.send("7-3", 0, 7, sequence_start=True, sequence_end=True)  # no response: final only
    # [count so far in the sequence, CORRID, END]
    assert stream.collect(6) == {
        "7-0": [[1, 7, 0], [2, 7, 0]],
        "8-0": [[1, 8, 0]],
        "7-1": [[3, 7, 0], [4, 7, 0], [5, 7, 0]],
        "8-1": [[2, 8, 1]],
        "7-2": [[6, 7, 1]],
        "7-3": [],
    }


def test_a_sequence_must_start_and_single_answer_apis_are_refused(stream: Stream) -> None:
    stream.send("lost", 1, 99)
    error = stream.answers.get(timeout=30)
    assert isinstance(error, InferenceServerException)
    assert error.message() == (
        "inference request for sequence 99 to model 'counting' must specify the START flag on "
        "the first request of the sequence"
    )
    with pytest.raises(InferenceServerException) as refused:
        stream.client.infer("counting", counts(1), sequence_id=5, sequence_start=True)
    assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
    assert refused.value.message() == (
        "ModelInfer RPC doesn't support models with decoupled transaction policy"
    )
    # The sequence batcher never saw the refused request: sequence 5 was not started.
    stream.send("5-1", 1, 5)
    assert "must specify the START flag" in stream.answers.get(timeout=30).message()


def test_http_infer_is_refused_and_implicit_state_is_not_loaded(
    server_factory: Factory, repo: Path
) -> None:
    server = server_factory(model_repositories=(repo,))
    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput("IN", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.ones((1, 1), np.int32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("counting", [tensor], sequence_id=3, sequence_start=True)
        assert refused.value.status() == "501"
        index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert index["counting"]["state"] == "READY"
    assert index["with_state"]["state"] == "UNAVAILABLE"
    assert (
        "sequence_batching.state (implicit state) of a decoupled model is not supported"
        in (index["with_state"]["reason"])
    )


@pytest.mark.slow
@needs_perf_analyzer
def test_perf_analyzer_streams_sequences(server_factory: Factory, repo: Path) -> None:
    server = server_factory(model_repositories=(repo,))
    data = repo / "data.json"
    data.write_text('{"data": [{"IN": [2]}]}')
    flags = ["--streaming", "--sequence-length", "4", "--input-data", str(data)]
    output = run_perf_analyzer("counting", server.grpc_url, "grpc", *flags, "-p", "500", "-r", "3")
    assert "Response Throughput" in output  # counted as a decoupled model's responses
