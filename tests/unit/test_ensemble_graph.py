"""The step-ordering logic of ensembles with plain names: which steps start at once, which
become ready as steps finish, which a request for some outputs needs at all, and how tensors
cross between batching and non-batching models; and the runtime an ensemble version holds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inferd.repository.config import normalize, parse_config_text, to_model_config, validate
from inferd.repository.ensemble_graph import EnsembleGraph, Progress
from inferd.repository.ensemble_runtime import EnsembleRuntime
from inferd.server.ensemble import fit_batching
from inferd.server.errors import ErrorCode, InferdError

# X -> pre -> a, b;  a -> left -> L;  b -> right -> R;  L, R -> join -> Y;  X -> side -> S
DIAMOND = EnsembleGraph(
    [
        (("X",), ("a", "b")),  # 0 pre
        (("a",), ("L",)),  # 1 left
        (("b",), ("R",)),  # 2 right
        (("L", "R"), ("Y",)),  # 3 join
        (("X",), ("S",)),  # 4 side
    ],
    inputs=["X"],
    outputs=["Y", "S"],
)


def run_order(graph: EnsembleGraph, requested: list[str] | None = None) -> list[list[int]]:
    """The rounds in which a request's steps start when each round's steps finish together."""
    plan = graph.plan(requested)
    progress = Progress(graph, plan)
    rounds = [list(plan.first)]
    while not progress.done:
        ready: list[int] = []
        for step in rounds[-1]:
            ready += progress.finished(step)
        rounds.append(sorted(ready))
    return [r for r in rounds if r]


def test_independent_steps_start_together_and_a_join_waits_for_both() -> None:
    assert run_order(DIAMOND) == [[0, 4], [1, 2], [3]]


def test_a_join_starts_only_when_its_last_input_is_written() -> None:
    progress = Progress(DIAMOND, DIAMOND.plan())
    assert progress.finished(0) == [1, 2]
    assert progress.finished(1) == []  # "join" still waits for R
    assert progress.finished(2) == [3]
    assert progress.finished(4) == []
    assert not progress.done
    assert progress.finished(3) == []
    assert progress.done


def test_steps_that_no_requested_output_needs_are_left_out() -> None:
    assert DIAMOND.plan(["S"]).steps == (4,)
    assert run_order(DIAMOND, ["S"]) == [[4]]
    assert DIAMOND.plan(["Y"]).steps == (0, 1, 2, 3)
    assert DIAMOND.plan([]).steps == ()
    assert Progress(DIAMOND, DIAMOND.plan([])).done


def test_a_tensor_read_twice_by_one_step_counts_once() -> None:
    graph = EnsembleGraph([(("X",), ("t",)), (("t", "t"), ("Y",))], inputs=["X"], outputs=["Y"])
    assert run_order(graph) == [[0], [1]]


def test_steps_listed_out_of_order_still_run_in_dataflow_order() -> None:
    graph = EnsembleGraph([(("t",), ("Y",)), (("X",), ("t",))], inputs=["X"], outputs=["Y"])
    assert graph.runnable() == [1, 0]
    assert run_order(graph) == [[1], [0]]
    assert graph.dataflow_error("e", ["0", "1"]) == ""


def test_a_cycle_leaves_steps_that_can_never_run() -> None:
    graph = EnsembleGraph([(("X", "q"), ("p",)), (("p",), ("q", "Y"))], inputs=["X"], outputs=["Y"])
    assert graph.runnable() == []
    assert "circular dependency in ensemble 'e': steps a -> b -> a" in graph.dataflow_error(
        "e", ["a", "b"]
    )


def test_tensors_cross_between_batching_and_non_batching_models() -> None:
    row = np.arange(4, dtype=np.float32)
    batch_of_one = row.reshape(1, 4)
    # From a non-batching model (batch 0) into a batching one: gains a batch dim of 1.
    assert fit_batching(row, 0, (4,), batching=True).shape == (1, 4)
    # A shape that already has the batch in it passes unchanged.
    assert fit_batching(batch_of_one, 0, (4,), batching=True).shape == (1, 4)
    # From a batching model, batch 1, into a non-batching one: loses the batch dim...
    assert fit_batching(batch_of_one, 1, (4,), batching=False).shape == (4,)
    # ...unless the model takes the batched shape as it is, or the batch is larger.
    assert fit_batching(batch_of_one, 1, (1, 4), batching=False).shape == (1, 4)
    assert fit_batching(np.zeros((2, 4)), 2, (4,), batching=False).shape == (2, 4)
    # Same kind on both sides: untouched.
    assert fit_batching(batch_of_one, 1, (4,), batching=True) is batch_of_one
    assert fit_batching(row, 0, (4,), batching=False) is row


# ---- the runtime an ensemble version holds (repository/ensemble_runtime.py) -----------------


def runtime() -> EnsembleRuntime:
    text = """
platform: "ensemble"
max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "Z" data_type: TYPE_FP32 dims: [ 4 ] }
]
ensemble_scheduling { step [
  { model_name: "a" model_version: -1
    input_map { key: "I" value: "X" } output_map { key: "O" value: "Y" } },
  { model_name: "b" model_version: -1
    input_map { key: "I" value: "X" } output_map { key: "O" value: "Z" } }
] }
"""
    proto = parse_config_text(text, "config.pbtxt")
    normalize(proto, "ens", gpu_count=0)
    validate(proto, "ens", "config.pbtxt")
    return EnsembleRuntime(to_model_config(proto, ""))


def test_plans_are_made_once_per_set_of_requested_outputs() -> None:
    ensemble = runtime()
    assert ensemble.plan(None).steps == (0, 1)
    assert ensemble.plan(["Z"]).steps == (1,)
    assert ensemble.plan(["Z"]) is ensemble.plan(("Z",))
    assert ensemble.plan(["Y", "Z"]) is not ensemble.plan(None)  # same steps, kept apart


async def test_unloading_waits_for_requests_in_flight_and_refuses_new_ones() -> None:
    ensemble = runtime()
    ensemble.started()
    ensemble.started()
    closing = asyncio.create_task(ensemble.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    with pytest.raises(InferdError) as refused:
        ensemble.started()
    assert refused.value.code is ErrorCode.UNAVAILABLE
    assert refused.value.message == "model 'ens' is unloading"
    ensemble.finished()
    await asyncio.sleep(0.01)
    assert not closing.done()  # one still in flight
    ensemble.finished()
    await asyncio.wait_for(closing, 1)
    await asyncio.wait_for(runtime().close(), 1)  # nothing in flight: at once
