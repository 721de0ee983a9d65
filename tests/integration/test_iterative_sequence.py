"""Iterative sequences (`sequence_batching { iterative_sequence: true }`) through the real
tritonclient: a python model runs a request again and again (request rescheduling) until it is
done, each batch mixing new requests with ones in progress (continuous batching). Checked
against what tritonserver 2.51 answers to the same model and requests."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.decoupled_models import ASYNC_COUNTDOWN, COUNTDOWN, countdown_config
from tests.perf_analyzer import needs_perf_analyzer, run_perf_analyzer
from tests.python_models import write_python_model

ITERATIVE = "sequence_batching { iterative_sequence: true }"
WARMUP = """
model_warmup [{
  name: "five" batch_size: 1
  inputs { key: "INPUT" value: { data_type: TYPE_INT32 dims: [ 1 ] input_data_file: "five" } }
}]
"""
RESCHEDULE_REFUSED = (
    "Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the model is not "
    "configured to handle such a flag."
)


@pytest.fixture(scope="module", params=["thread", "process"])
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    """The models in the server's process, then in stub processes."""
    repo = tmp_path_factory.mktemp("iterative")
    for name, decoupled, scheduling, delay in (
        ("stream", True, ITERATIVE, 0),
        ("stream_oldest", True, ITERATIVE.replace("}", "oldest { } }"), 0),
        ("slow_stream", True, ITERATIVE, 40),
        ("unloaded", True, ITERATIVE, 40),
        ("single", False, ITERATIVE, 0),
        ("dynamic_stream", True, "dynamic_batching {}", 0),
        ("sequence_stream", True, "sequence_batching {}", 0),
        ("dynamic", False, "dynamic_batching {}", 0),
        ("plain", False, "", 0),
    ):
        write_python_model(repo, name, COUNTDOWN, countdown_config(decoupled, scheduling, delay))
    async_config = countdown_config(True, "dynamic_batching {}")
    write_python_model(repo, "async_dynamic_stream", ASYNC_COUNTDOWN, async_config)
    # Warmup asks for 5 tokens: its first run reschedules the request, which warms the model.
    warmed_config = countdown_config(True, ITERATIVE) + WARMUP
    warmed = write_python_model(repo, "warmed", COUNTDOWN, warmed_config)
    (warmed / "warmup").mkdir()
    (warmed / "warmup" / "five").write_bytes(np.array([5], np.int32).tobytes())
    settings = replace(
        TEST_SETTINGS,
        model_repositories=(repo,),
        model_control_mode="explicit",
        load_models=("*",),
        python_isolation=request.param,
    )
    running = start_server(settings)
    yield running
    running.stop()


def count(n: int, module: Any = grpcclient) -> list[Any]:
    tensor = module.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.full((1, 1), n, np.int32))
    return [tensor]


class Stream:
    """One gRPC stream; each request's answers by request id."""

    def __init__(self, server: RunningServer) -> None:
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.answers: queue.Queue[Any] = queue.Queue()
        self.client.start_stream(lambda result, error: self.answers.put(error or result))

    def send(self, model: str, n: int, request_id: str = "r", **sequence: Any) -> None:
        self.client.async_stream_infer(model, count(n), request_id=request_id, **sequence)

    def next(self) -> Any:
        answer = self.answers.get(timeout=30)
        if isinstance(answer, Exception):
            return answer
        seen = json.loads(answer.as_numpy("SEEN").ravel()[0])
        final = answer.get_response().parameters["triton_final_response"].bool_param
        return answer.get_response().id, int(answer.as_numpy("OUTPUT").ravel()[0]), seen, final

    def run(self, model: str, n: int, **sequence: Any) -> list[Any]:
        """One request's answers, up to its final one or an error."""
        self.send(model, n, **sequence)
        got = [self.next()]
        while not isinstance(got[-1], Exception) and not got[-1][3]:
            got.append(self.next())
        return got

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


@pytest.fixture
def stream(server: RunningServer) -> Iterator[Stream]:
    opened = Stream(server)
    yield opened
    opened.close()


@pytest.mark.parametrize("model", ["stream", "stream_oldest"])
def test_a_request_without_an_id_is_run_until_done_with_an_id_of_its_own(
    stream: Stream, model: str
) -> None:
    first = stream.run(model, 3)
    # [(left, corrid, flags, final)]: START on the first run only, as Triton 2.51 gives it.
    assert [(a[1], a[2]["corrid"], a[2]["flags"], a[3]) for a in first] == [
        (2, first[0][2]["corrid"], 1, False),
        (1, first[0][2]["corrid"], 0, False),
        (0, first[0][2]["corrid"], 0, True),
    ]
    assert first[0][2]["corrid"] > 0
    second = stream.run(model, 1)
    assert [(a[1], a[2]["flags"], a[3]) for a in second] == [(0, 1, True)]
    assert second[0][2]["corrid"] != first[0][2]["corrid"]


def test_a_warmup_request_that_is_rescheduled_counts_as_run(stream: Stream) -> None:
    assert [answer[1] for answer in stream.run("warmed", 2)] == [1, 0]


def test_a_client_id_is_kept_and_needs_start(stream: Stream) -> None:
    answers = stream.run("stream", 2, sequence_id=7, sequence_start=True)
    assert [(a[2]["corrid"], a[2]["flags"]) for a in answers] == [(7, 1), (7, 0)]
    # The request was a sequence of its own: it ended when it was done.
    (error,) = stream.run("stream", 2, sequence_id=7)
    assert isinstance(error, InferenceServerException)
    assert "must specify the START flag on the first request of the sequence" in str(error)


def test_batches_mix_new_requests_with_requests_in_progress(server: RunningServer) -> None:
    opened = Stream(server)
    try:
        opened.send("slow_stream", 8, "long")
        assert opened.next()[:2] == ("long", 7)  # long runs, and is rescheduled
        opened.send("slow_stream", 2, "short")
        answers = [opened.next() for _ in range(9)]  # long: 6..0, short: 1, 0
    finally:
        opened.close()
    short = [a for a in answers if a[0] == "short"]
    assert [(a[1], a[3]) for a in short] == [(1, False), (0, True)]
    # short's first run (START) shared a batch with a later run of long (no flags) ...
    assert sorted(short[0][2]["batch"]) == [0, 1]
    # ... and long went on after short was done, in batches of its own.
    long_after = [a for a in answers if a[0] == "long"][-1]
    assert long_after[1:4:2] == (0, True) and long_after[2]["batch"] == [0]


def test_a_single_answer_model_answers_once_done_and_counts_every_run(
    server: RunningServer,
) -> None:
    before = model_stats(server, "single")
    http = httpclient.InferenceServerClient(server.http_url)
    answer = http.infer("single", count(3, httpclient))
    assert answer.as_numpy("OUTPUT").tolist() == [[0]]
    assert json.loads(answer.as_numpy("SEEN")[0][0])["flags"] == 0  # the last of three runs
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert grpc.infer("single", count(2)).as_numpy("OUTPUT").tolist() == [[0]]
    generated = requests.post(
        f"http://{server.http_url}/v2/models/single/generate", json={"INPUT": 4}, timeout=30
    )
    assert generated.json()["OUTPUT"] == 0
    after = model_stats(server, "single")
    # Every run is an inference and an execution, as in Triton.
    assert after["inference_count"] - before["inference_count"] == 9
    assert after["execution_count"] - before["execution_count"] == 9
    success = after["inference_stats"]["success"]["count"]
    assert success - before["inference_stats"]["success"]["count"] == 9


def test_generate_stream_streams_every_run(server: RunningServer) -> None:
    answer = requests.post(
        f"http://{server.http_url}/v2/models/stream/generate_stream",
        json={"INPUT": 3},
        timeout=30,
    )
    events = [json.loads(line[len("data: ") :]) for line in answer.text.split("\n") if line]
    assert [event["OUTPUT"] for event in events] == [2, 1, 0]


@pytest.mark.parametrize("model", ["dynamic_stream", "sequence_stream", "async_dynamic_stream"])
def test_rescheduling_without_iterative_sequences_ends_the_stream_with_tritons_error(
    stream: Stream, model: str
) -> None:
    sequence = {"sequence_id": 5, "sequence_start": True} if model == "sequence_stream" else {}
    first, error = stream.run(model, 2, **sequence)
    assert first[1:4:2] == (1, False)  # the run's own response still went out
    assert isinstance(error, InferenceServerException) and RESCHEDULE_REFUSED in str(error)


@pytest.mark.parametrize("model", ["dynamic", "plain"])
def test_rescheduling_a_single_answer_request_without_iterative_sequences_is_an_error(
    server: RunningServer, model: str
) -> None:
    with pytest.raises(InferenceServerException, match="RELEASE_RESCHEDULE") as raised:
        httpclient.InferenceServerClient(server.http_url).infer(model, count(2, httpclient))
    assert raised.value.status() == "500"
    assert RESCHEDULE_REFUSED in str(raised.value)


def test_a_request_in_progress_finishes_before_its_model_unloads(server: RunningServer) -> None:
    opened = Stream(server)
    try:
        opened.send("unloaded", 5)
        assert opened.next()[1] == 4
        grpcclient.InferenceServerClient(server.grpc_url).unload_model("unloaded")
        assert [opened.next()[1:4:2] for _ in range(4)] == [
            (3, False),
            (2, False),
            (1, False),
            (0, True),
        ]
    finally:
        opened.close()


def test_a_client_that_leaves_stops_its_request_being_run_again(server: RunningServer) -> None:
    opened = Stream(server)
    opened.send("slow_stream", 1000)
    assert opened.next()[1] == 999
    opened.close(cancel=True)
    deadline = time.monotonic() + 10
    runs = model_stats(server, "slow_stream")["inference_count"]
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = model_stats(server, "slow_stream")["inference_count"]
        if now == runs:
            break
        runs = now
    assert now == runs, "the request kept running after its client left"
    assert runs < 100


@pytest.mark.slow
@needs_perf_analyzer
def test_perf_analyzer_streams_requests_run_several_times(
    server: RunningServer, tmp_path: Path
) -> None:
    """perf_analyzer sees a sequence model: with --sequence-length 1 each request starts and
    ends its own sequence, which is what an iterative sequence is."""
    data = tmp_path / "data.json"
    data.write_text('{"data": [{"INPUT": [3]}]}')
    flags = ["--streaming", "--sequence-length", "1", "--input-data", str(data)]
    before = model_stats(server, "stream")
    output = run_perf_analyzer("stream", server.grpc_url, "grpc", *flags, "-p", "500", "-r", "3")
    assert "Response Throughput" in output
    after = model_stats(server, "stream")
    runs = after["inference_count"] - before["inference_count"]
    assert runs > 0 and runs % 3 == 0  # three runs per request, none failed
    assert after["inference_stats"]["fail"] == before["inference_stats"]["fail"]


def model_stats(server: RunningServer, model: str) -> dict[str, Any]:
    answer = requests.get(f"http://{server.http_url}/v2/models/{model}/stats", timeout=30)
    stats: dict[str, Any] = answer.json()["model_stats"][0]
    return stats
