"""Ragged batching (allow_ragged_batch, batch_input, batch_output) with a real ONNX Runtime
session and the real tritonclient: requests of different lengths share one batch, the model
gets them as one 1-D tensor with every kind of batch input, and each request gets its part of
the scattered output."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.models import finish, write_model
from tests.wire import client_for, infer, load_failure

Factory = Callable[..., RunningServer]
BATCH_INPUTS = {  # model input: kind
    "COUNT": "BATCH_ELEMENT_COUNT",
    "ACC": "BATCH_ACCUMULATED_ELEMENT_COUNT",
    "ACC0": "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO",
    "ITEM": "BATCH_ITEM_SHAPE",
    "FLAT": "BATCH_ITEM_SHAPE_FLATTEN",
    "MAXS": "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE",
}
CONFIG = """
max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "COUNT_OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "END" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "START" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "ITEM_OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "FLAT_OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "MAX" data_type: TYPE_INT64 dims: [ 1 ] }
]
batch_input [ BATCH_INPUTS ]
batch_output [{ target_name: "Y" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "X" }]
dynamic_batching { preferred_batch_size: [ 3 ] max_queue_delay_microseconds: 3000000 }
""".replace(
    "BATCH_INPUTS",
    ", ".join(
        f'{{ kind: {kind} target_name: "{name}" data_type: TYPE_INT32 source_input: "X" }}'
        for name, kind in BATCH_INPUTS.items()
    ),
)


def ragged_model() -> onnx.ModelProto:
    """Y = 2 * X over the whole flat batch; every batch input comes back per request."""

    def column(name: str) -> onnx.NodeProto:  # [n] -> [n, 1]
        return helper.make_node("Unsqueeze", [name, "axis1"], [f"{name}_col"])

    nodes = [
        helper.make_node("Mul", ["X", "two"], ["Y"]),
        column("COUNT"),
        helper.make_node("Identity", ["COUNT_col"], ["COUNT_OUT"]),
        column("ACC"),
        helper.make_node("Identity", ["ACC_col"], ["END"]),
        helper.make_node("Slice", ["ACC0", "zero", "minus_one"], ["STARTS"]),  # drop the total
        column("STARTS"),
        helper.make_node("Identity", ["STARTS_col"], ["START"]),
        helper.make_node("Identity", ["ITEM"], ["ITEM_OUT"]),
        column("FLAT"),
        helper.make_node("Identity", ["FLAT_col"], ["FLAT_OUT"]),
        # MAX: the length of MAXS (its shape is what it says), once per request.
        helper.make_node("Shape", ["MAXS"], ["max_len"]),
        helper.make_node("Reshape", ["max_len", "one_by_one"], ["max_cell"]),
        helper.make_node("Shape", ["COUNT"], ["n"]),
        helper.make_node("Concat", ["n", "one"], ["n_by_one"], axis=0),
        helper.make_node("Expand", ["max_cell", "n_by_one"], ["MAX"]),
    ]
    constants = [
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("one_by_one", TensorProto.INT64, [2], [1, 1]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
    ]
    int32 = TensorProto.INT32
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["total"])]
    inputs += [
        helper.make_tensor_value_info(name, int32, ["items", 1] if name == "ITEM" else [name])
        for name in BATCH_INPUTS
    ]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["total"])]
    outputs += [
        helper.make_tensor_value_info(name, int32, ["n", 1])
        for name in ("COUNT_OUT", "END", "START", "ITEM_OUT", "FLAT_OUT")
    ]
    outputs.append(helper.make_tensor_value_info("MAX", TensorProto.INT64, ["n", 1]))
    graph = helper.make_graph(nodes, "ragged", inputs, outputs, initializer=constants)
    return finish(graph)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("ragged")
    write_model(root, "ragged", ragged_model(), CONFIG)
    running = start_server(replace(TEST_SETTINGS, model_repositories=(root,)))
    yield running
    running.stop()


def test_requests_of_different_lengths_share_one_batch(server: RunningServer) -> None:
    lengths = (3, 5, 4)
    answers: dict[int, dict[str, Any]] = {}

    def send(length: int) -> None:
        x = np.arange(length, dtype=np.float32)[None] + 10 * length
        answers[length] = infer(server, "http", "ragged", {"X": x})

    threads = [threading.Thread(target=send, args=(n,)) for n in lengths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans = []
    for length, answer in answers.items():
        x = np.arange(length, dtype=np.float32)[None] + 10 * length
        assert answer["Y"].shape == (1, length)  # scattered back in the request's own shape
        assert answer["Y"].tolist() == (2 * x).tolist()
        count, end, start = (int(answer[k].item()) for k in ("COUNT_OUT", "END", "START"))
        assert count == length and end - start == length
        assert int(answer["ITEM_OUT"].item()) == int(answer["FLAT_OUT"].item()) == length
        assert int(answer["MAX"].item()) == max(lengths)  # all three ran as one batch
        spans.append((start, end))
    # Each request's part of the flat batch, one after another from 0.
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == sum(lengths)
    assert all(before[1] == after[0] for before, after in itertools.pairwise(spans))
    stats = client_for(server, "http").get_inference_statistics("ragged")["model_stats"][0]
    assert stats["execution_count"] == 1 and stats["inference_count"] == 3


def test_batch_inputs_are_not_for_clients(server: RunningServer) -> None:
    client = client_for(server, "http")
    try:
        names = [t["name"] for t in client.get_model_metadata("ragged")["inputs"]]
        assert names == ["X"]
        count = httpclient.InferInput("COUNT", [1], "INT32")
        count.set_data_from_numpy(np.ones(1, np.int32))
        x = httpclient.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        # Refused as Triton refuses any input the config does not list: counted first.
        with pytest.raises(
            httpclient.InferenceServerException, match="expected 1 inputs but got 2"
        ):
            client.infer("ragged", [x, count])
    finally:
        client.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (('source_input: "X" }]', 'source_input: "W" }]'), "source_input 'W' is not a model input"),
        (('target_name: "COUNT"', 'target_name: "NOPE"'), "target 'NOPE' is not an input of"),
        (("TYPE_INT32 source_input", "TYPE_INT64 source_input"), "TYPE_INT32 or TYPE_FP32"),
    ],
)
def test_batch_io_mistakes_fail_the_load(
    tmp_path: Path, server_factory: Factory, change: tuple[str, str], reason: str
) -> None:
    write_model(tmp_path, "ragged", ragged_model(), CONFIG.replace(*change, 1))
    assert reason in load_failure(server_factory(model_repositories=(tmp_path,)))


def test_the_sequence_batcher_lays_out_ragged_batches_too(
    tmp_path: Path, server_factory: Factory
) -> None:
    oldest = (
        "sequence_batching { oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2 ] "
        "max_queue_delay_microseconds: 3000000 } }"
    )
    config = CONFIG[: CONFIG.index("dynamic_batching")] + oldest
    write_model(tmp_path, "ragged_seq", ragged_model(), config)
    server = server_factory(model_repositories=(tmp_path,))
    answers: dict[int, dict[str, Any]] = {}

    def send(length: int) -> None:
        x = np.ones((1, length), np.float32)
        flags: dict[str, Any] = {
            "sequence_id": length,
            "sequence_start": True,
            "sequence_end": True,
        }
        answers[length] = infer(server, "grpc", "ragged_seq", {"X": x}, **flags)

    threads = [threading.Thread(target=send, args=(n,)) for n in (2, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for length, answer in answers.items():
        assert answer["Y"].tolist() == [[2.0] * length]
        assert int(answer["COUNT_OUT"].item()) == length
        assert int(answer["MAX"].item()) == 6  # one batch of both sequences
