"""Ensemble `max_inflight_requests` (Triton's, one limit per step across the ensemble's
requests) on a real server: a decoupled producer that sends faster than the step after it
runs is held back, so intermediate responses never pile up, and every response still comes."""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import RunningServer
from tests.decoupled_models import step
from tests.python_models import write_python_model

Factory = Callable[..., RunningServer]
VALUES = 12

# Decoupled: one response per value of IN, sent from execute(); each send that returned is
# counted in a file the consumer reads.
PRODUCER = """
import json

import numpy as np
import pytest
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.sent_file = config["parameters"]["SENT_FILE"]["string_value"]

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            for value in pb_utils.get_input_tensor_by_name(request, "IN").as_numpy():
                out = pb_utils.Tensor("OUT", np.array([value], np.int32))
                sender.send(pb_utils.InferenceResponse([out]))
                with open(self.sent_file, "a") as sent:
                    sent.write("x")
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

# Slow: Y = X + 100, and LAG = how many responses the producer has sent beyond this one.
CONSUMER = """
import json
import time

import numpy as np
import pytest
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.sent_file = config["parameters"]["SENT_FILE"]["string_value"]
        self.done = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            self.done += 1
            with open(self.sent_file) as sent:
                lag = len(sent.read()) - self.done
            time.sleep(0.02)
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", x + 100),
                pb_utils.Tensor("LAG", np.array([lag], np.int32)),
            ]))
        return responses
"""


def config(io: str, sent_file: Path, decoupled: bool = False) -> str:
    policy = "model_transaction_policy { decoupled: true }\n" if decoupled else ""
    return (
        f'backend: "python"\nmax_batch_size: 0\n{policy}{io}\n'
        f'parameters {{ key: "SENT_FILE" value: {{ string_value: "{sent_file}" }} }}\n'
        "instance_group [{ count: 1 kind: KIND_CPU }]\n"
    )


def tensor(name: str, dims: str) -> str:
    return f'{{ name: "{name}" data_type: TYPE_INT32 dims: [ {dims} ] }}'


def pipeline(
    tmp_path: Path, server_factory: Factory, nested: bool = False, isolation: str = "thread"
) -> RunningServer:
    """producer (decoupled) -> consumer, under max_inflight_requests: 1; `nested`: the
    producer inside an ensemble of its own, which is the decoupled step; `isolation`: where
    the python models run."""
    sent_file = tmp_path / "sent"
    sent_file.write_text("")
    repo = tmp_path / "repo"
    io = f"input [{tensor('IN', '-1')}]\noutput [{tensor('OUT', '1')}]"
    write_python_model(repo, "producer", PRODUCER, config(io, sent_file, decoupled=True))
    io = f"input [{tensor('X', '1')}]\noutput [{tensor('Y', '1')}, {tensor('LAG', '1')}]"
    write_python_model(repo, "consumer", CONSUMER, config(io, sent_file))
    (repo / "pipeline" / "1").mkdir(parents=True)
    (repo / "pipeline" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 0\n'
        f"input [{tensor('IN', '-1')}]\noutput [{tensor('OUT', '1')}, {tensor('LAG', '1')}]\n"
        "ensemble_scheduling { max_inflight_requests: 1 step [ "
        + step("inner" if nested else "producer", {"IN": "IN"}, {"OUT": "each"})
        + ","
        + step("consumer", {"X": "each"}, {"Y": "OUT", "LAG": "LAG"})
        + " ] }\n"
    )
    (repo / "inner" / "1").mkdir(parents=True)
    (repo / "inner" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 0\n'
        f"input [{tensor('IN', '-1')}]\noutput [{tensor('OUT', '1')}]\n"
        "ensemble_scheduling { step [ " + step("producer", {"IN": "IN"}, {"OUT": "OUT"}) + " ] }\n"
    )
    return server_factory(model_repositories=(repo,), python_isolation=isolation)


def start(server: RunningServer, count: int) -> tuple[Any, queue.Queue[Any]]:
    """A stream with one request of `count` values on it."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(lambda result, error: answers.put(error or result))
    values = grpcclient.InferInput("IN", [count], "INT32")
    values.set_data_from_numpy(np.arange(count, dtype=np.int32))
    client.async_stream_infer("pipeline", [values], enable_empty_final_response=True)
    return client, answers


def run(server: RunningServer) -> tuple[list[int], list[int]]:
    """One request of VALUES values to its final response: (outputs, lags)."""
    client, answers = start(server, VALUES)
    outs, lags = [], []
    for _ in range(VALUES):
        answer = answers.get(timeout=30)
        assert not isinstance(answer, Exception), answer
        outs.append(int(answer.as_numpy("OUT")[0]))
        lags.append(int(answer.as_numpy("LAG")[0]))
    final = answers.get(timeout=30)
    assert final.get_response().parameters["triton_final_response"].bool_param
    client.stop_stream()
    client.close()
    return outs, lags


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.parametrize("nested", [False, True], ids=["direct", "nested"])
def test_a_full_step_holds_the_decoupled_producer_back(
    tmp_path: Path, server_factory: Factory, nested: bool, isolation: str
) -> None:
    outs, lags = run(pipeline(tmp_path, server_factory, nested, isolation))
    assert sorted(outs) == [v + 100 for v in range(VALUES)]
    # One response at the consumer, one waiting for its place, one send under way: the
    # producer is never further ahead (without the limit it runs VALUES - 1 ahead).
    assert max(lags) <= 3, lags


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_client_that_leaves_releases_the_held_back_producer(
    tmp_path: Path, server_factory: Factory, isolation: str
) -> None:
    server = pipeline(tmp_path, server_factory, isolation=isolation)
    client, answers = start(server, 200)  # the producer is held back most of the time
    answers.get(timeout=30)
    client.stop_stream(cancel_requests=True)
    client.close()
    # The places and the producer's instance are free again: the next request runs whole
    # (and the server's stop at the end does not wait for a stuck producer).
    outs, _ = run(server)
    assert sorted(outs) == [v + 100 for v in range(VALUES)]
