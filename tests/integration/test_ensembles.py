"""Triton ensembles (`platform: "ensemble"`) in a repository mounted unchanged, served by a
real server and driven by the real tritonclient over HTTP and gRPC: chains, a diamond, python
steps, nested ensembles, requested outputs, failing steps, broken ensembles next to serving
models, explicit load/unload with composing models, poll mode, and statistics."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.models import double_model, identity_model, write_model
from tests.python_models import BATCHER, BATCHER_CONFIG, GATE, RAISER, write_python_model
from tests.waiting import wait_for
from tests.wire import PROTOCOLS, client_for, fails, infer

Factory = Callable[..., RunningServer]

# ---- the composing models ------------------------------------------------------------------

# OUTPUT0 = 2 * INPUT0, OUTPUT1 = INPUT0 (tests/models.py double_model), batching.
DOUBLE = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ -1 ] }
]
dynamic_batching { }
"""

IDENTITY = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
"""

# A python step that joins two tensors: SUM = A + B.
ADD = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", a + b)]))
        return responses
"""

ADD_CONFIG = """
backend: "python"
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "B" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [{ name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] }]
dynamic_batching { }
"""

# Two steps that can only finish together: each leaves a mark for the request and waits for
# the other's. Run one after the other, the first would time out and fail.
MEET = """
import os
import time

import triton_python_backend_utils as pb_utils

FOLDER, ME, OTHER = {folder!r}, {me!r}, {other!r}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mark = os.path.join(FOLDER, request.request_id() + "-")
            open(mark + ME, "w").close()
            deadline = time.monotonic() + 20
            while not os.path.exists(mark + OTHER):
                if time.monotonic() > deadline:
                    raise TimeoutError(ME + " waited alone: the steps did not run together")
                time.sleep(0.005)
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return responses
"""

MEET_CONFIG = """
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
"""

# A python model that does not batch: OUTPUT0 = INPUT0.
ROW_SOURCE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return responses
"""

ROW = """
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
"""

# A python model that answers no tensors (Triton's python backend lets it).
HOLLOW_SOURCE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]
"""

# BATCHER (python_models.py) with no queue delay: a negative input fails its request alone.
PICKY_CONFIG = BATCHER_CONFIG.replace(
    "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 5000000 }",
    "dynamic_batching { }",
)

# ---- ensembles -----------------------------------------------------------------------------


def ensemble(
    inputs: dict[str, str],
    outputs: dict[str, str],
    *steps: tuple[str, dict[str, str], dict[str, str]],
    max_batch_size: int = 8,
    dims: str = "[ 4 ]",
) -> str:
    """An ensemble config: tensors by name -> datatype, steps as (model, input_map, output_map)."""

    def tensors(named: dict[str, str]) -> str:
        return ", ".join(
            f'{{ name: "{n}" data_type: TYPE_{t} dims: {dims} }}' for n, t in named.items()
        )

    def maps(kind: str, mapping: dict[str, str]) -> str:
        return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in mapping.items())

    text = (
        f'platform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        f"input [{tensors(inputs)}]\noutput [{tensors(outputs)}]\n"
    )
    body = ", ".join(
        f'{{ model_name: "{model}" model_version: -1 {maps("input_map", ins)} '
        f"{maps('output_map', outs)} }}"
        for model, ins, outs in steps
    )
    return text + f"ensemble_scheduling {{ step [ {body} ] }}\n"


def write_ensemble(repo: Path, name: str, config: str) -> Path:
    """Triton's layout: config.pbtxt and an empty version folder."""
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    return repo / name


X = {"X": "FP32"}
CHAIN = ensemble(
    X,
    {"Y": "FP32"},
    ("double", {"INPUT0": "X"}, {"OUTPUT0": "twice"}),
    ("double", {"INPUT0": "twice"}, {"OUTPUT0": "Y"}),
)
DIAMOND = ensemble(
    X,
    {"Y": "FP32"},
    ("double", {"INPUT0": "X"}, {"OUTPUT0": "left"}),
    ("identity", {"INPUT0": "X"}, {"OUTPUT0": "right"}),
    ("add", {"A": "left", "B": "right"}, {"SUM": "Y"}),
)
# Two outputs from two independent branches, to ask for one of them.
FANOUT = ensemble(
    X,
    {"DOUBLED": "FP32", "SAME": "FP32"},
    ("double", {"INPUT0": "X"}, {"OUTPUT0": "DOUBLED"}),
    ("fanout_identity", {"INPUT0": "X"}, {"OUTPUT0": "SAME"}),
)
NESTED = ensemble(
    X,
    {"Y": "FP32"},
    ("chain", {"X": "X"}, {"Y": "four_times"}),
    ("double", {"INPUT0": "four_times"}, {"OUTPUT0": "Y"}),
)
MEETING = ensemble(
    X,
    {"A": "FP32", "B": "FP32"},
    ("meet_a", {"INPUT0": "X"}, {"OUTPUT0": "A"}),
    ("meet_b", {"INPUT0": "X"}, {"OUTPUT0": "B"}),
    max_batch_size=0,
)
# A batching ensemble over a non-batching python model: a batch of 1 loses its batch dim.
UNBATCHED_STEP = ensemble(
    X, {"Y": "FP32"}, ("row", {"INPUT0": "X"}, {"OUTPUT0": "Y"}), max_batch_size=8
)
RAISING = ensemble(
    X, {"Y": "FP32"}, ("raiser", {"INPUT0": "X"}, {"OUTPUT0": "Y"}), max_batch_size=0
)
HOLLOWED = ensemble(
    X,
    {"Y": "FP32", "Z": "FP32"},
    ("row", {"INPUT0": "X"}, {"OUTPUT0": "Y"}),
    ("hollow", {"INPUT0": "X"}, {"OUTPUT0": "Z"}),
    max_batch_size=0,
)
PICKY = ensemble(X, {"Y": "FP32"}, ("picky", {"INPUT0": "X"}, {"Y": "Y"}), dims="[ 1 ]")
BATCHED = ensemble(
    X,
    {"Y": "FP32", "COUNT": "INT32"},
    ("batcher", {"INPUT0": "X"}, {"Y": "Y", "COUNT": "COUNT"}),
    dims="[ 1 ]",
)


def write_composing(repo: Path) -> None:
    write_model(repo, "double", double_model(), DOUBLE)
    write_model(repo, "identity", identity_model(), IDENTITY)
    write_model(repo, "fanout_identity", identity_model(), IDENTITY)
    write_python_model(repo, "add", ADD, ADD_CONFIG)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ensembles")
    write_composing(root)
    marks = tmp_path_factory.mktemp("marks")
    for me, other in (("meet_a", "meet_b"), ("meet_b", "meet_a")):
        source = MEET.format(folder=str(marks), me=me, other=other)
        write_python_model(root, me, source, MEET_CONFIG)
    write_python_model(root, "row", ROW_SOURCE, ROW)
    write_python_model(root, "raiser", RAISER, ROW)
    write_python_model(root, "hollow", HOLLOW_SOURCE, ROW)
    write_python_model(root, "picky", BATCHER, PICKY_CONFIG)
    write_python_model(root, "batcher", BATCHER, BATCHER_CONFIG)
    for name, config in {
        "chain": CHAIN,
        "diamond": DIAMOND,
        "fanout": FANOUT,
        "nested": NESTED,
        "meeting": MEETING,
        "unbatched_step": UNBATCHED_STEP,
        "raising": RAISING,
        "hollowed": HOLLOWED,
        "picky_ensemble": PICKY,
        "batched": BATCHED,
    }.items():
        write_ensemble(root, name, config)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    running = start_server(replace(TEST_SETTINGS, model_repositories=(repo,)))
    yield running
    running.stop()


# ---- helpers -------------------------------------------------------------------------------


def index(server: RunningServer) -> dict[str, tuple[str, str]]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        return {
            e["name"]: (e.get("state", ""), e.get("reason", ""))
            for e in client.get_model_repository_index()
        }
    finally:
        client.close()


def stats(server: RunningServer, model: str) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        document: dict[str, Any] = client.get_inference_statistics(model)["model_stats"][0]
        return document
    finally:
        client.close()


def unload_model(server: RunningServer, model: str) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.unload_model(model)
    finally:
        client.close()


BATCH = np.arange(8, dtype=np.float32).reshape(2, 4)

# ---- serving -------------------------------------------------------------------------------


def test_ensembles_load_with_the_repository(server: RunningServer) -> None:
    states = index(server)
    for name in ("chain", "diamond", "fanout", "nested", "meeting", "raising", "batched"):
        assert states[name] == ("READY", ""), name
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready("chain")
        metadata = client.get_model_metadata("chain")
        config = client.get_model_config("chain")
    finally:
        client.close()
    assert metadata["platform"] == "ensemble"
    assert metadata["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("X", "FP32", [-1, 4])
    ]
    assert config["platform"] == "ensemble" and config["instance_group"] == []
    # As tritonserver 2.51 prints an ensemble's config: a transaction policy, no optimization.
    assert config["model_transaction_policy"] == {"decoupled": False}
    assert "optimization" not in config
    steps = config["ensemble_scheduling"]["step"]
    assert [(s["model_name"], s["model_version"]) for s in steps] == [("double", -1)] * 2
    assert steps[1]["input_map"] == {"INPUT0": "twice"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_chain_of_onnx_models(server: RunningServer, protocol: str) -> None:
    out = infer(server, protocol, "chain", {"X": BATCH})
    assert out["Y"].tolist() == (4 * BATCH).tolist()
    assert out["Y"].dtype == np.float32


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_diamond_joined_by_a_python_step(server: RunningServer, protocol: str) -> None:
    out = infer(server, protocol, "diamond", {"X": BATCH})
    assert out["Y"].tolist() == (3 * BATCH).tolist()  # 2x (double) + x (identity)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_independent_steps_run_at_the_same_time(server: RunningServer, protocol: str) -> None:
    x = np.arange(4, dtype=np.float32)
    out = infer(server, protocol, "meeting", {"X": x}, request_id=f"meet-{protocol}")
    assert out["A"].tolist() == out["B"].tolist() == x.tolist()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_ensemble_of_an_ensemble(server: RunningServer, protocol: str) -> None:
    assert infer(server, protocol, "nested", {"X": BATCH})["Y"].tolist() == (8 * BATCH).tolist()


def test_a_batch_of_one_passes_to_a_model_that_does_not_batch(server: RunningServer) -> None:
    one = np.arange(4, dtype=np.float32).reshape(1, 4)
    assert infer(server, "grpc", "unbatched_step", {"X": one})["Y"].tolist() == one.tolist()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requested_outputs_run_only_the_steps_they_need(
    server: RunningServer, protocol: str
) -> None:
    before = stats(server, "fanout_identity")["inference_count"]
    out = infer(server, protocol, "fanout", {"X": BATCH}, outputs=["DOUBLED"])
    assert list(out) == ["DOUBLED"]
    assert out["DOUBLED"].tolist() == (2 * BATCH).tolist()
    assert stats(server, "fanout_identity")["inference_count"] == before  # never ran
    both = infer(server, protocol, "fanout", {"X": BATCH})
    assert sorted(both) == ["DOUBLED", "SAME"] and both["SAME"].tolist() == BATCH.tolist()
    assert stats(server, "fanout_identity")["inference_count"] == before + 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classification_of_an_ensemble_output(server: RunningServer, protocol: str) -> None:
    x = np.array([[1, 9, 3, 5]], np.float32)
    out = infer(server, protocol, "chain", {"X": x}, outputs=["Y"], class_count=2)
    assert [v.decode() if isinstance(v, bytes) else v for v in out["Y"][0]] == [
        "36.000000:1",
        "20.000000:3",
    ]


def test_composing_models_batch_requests_from_different_ensemble_requests(
    server: RunningServer,
) -> None:
    # "batcher" waits for 4 queued requests (or 5 s); each answer says how many it ran with.
    x = np.ones((1, 1), np.float32)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: infer(server, "http", "batched", {"X": x}), range(4)))
    assert [a["COUNT"].tolist() for a in answers] == [[[4]]] * 4
    assert [a["Y"].tolist() for a in answers] == [[[2.0]]] * 4


def test_ensembles_on_the_alternative_stacks_and_grpc_streams(
    repo: Path, server: RunningServer, server_factory: Factory
) -> None:
    # uvicorn and grpc.aio reach the core through infer(), not the fast paths' submit().
    alt = server_factory(model_repositories=(repo,), http_stack="uvicorn", grpc_stack="grpcio")
    for protocol in PROTOCOLS:
        assert infer(alt, protocol, "chain", {"X": BATCH})["Y"].tolist() == (4 * BATCH).tolist()
    # ModelStreamInfer answers each request of a stream, failures included.
    answers: list[tuple[Any, Any]] = []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        for model, value in (("chain", 1.0), ("raising", 1.0)):
            tensor = grpcclient.InferInput("X", [1, 4] if model == "chain" else [4], "FP32")
            shape = (1, 4) if model == "chain" else (4,)
            tensor.set_data_from_numpy(np.full(shape, value, np.float32))
            client.async_stream_infer(model, [tensor], request_id=model)
        wait_for(lambda: len(answers) == 2)
    finally:
        client.stop_stream()
        client.close()
    by_id = {
        (result.get_response().id if result is not None else "raising"): (result, error)
        for result, error in answers
    }
    assert by_id["chain"][0].as_numpy("Y").tolist() == [[4.0] * 4]
    assert "in ensemble 'raising', step model 'raiser'" in str(by_id["raising"][1])


# ---- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_failing_step_fails_the_request_with_its_error(
    server: RunningServer, protocol: str
) -> None:
    x = np.ones(4, np.float32)
    message = fails(lambda: infer(server, protocol, "raising", {"X": x}), protocol, "internal")
    assert message.startswith("in ensemble 'raising', step model 'raiser': ")
    assert "cannot compute this batch" in message
    # A step's own error code reaches the client: the python model refuses negative input.
    message = fails(
        lambda: infer(server, protocol, "picky_ensemble", {"X": -np.ones((1, 1), np.float32)}),
        protocol,
        "invalid",
    )
    assert message == "in ensemble 'picky_ensemble', step model 'picky': negative input"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_output_no_step_produced_is_left_out_of_the_answer(
    server: RunningServer, protocol: str
) -> None:
    """As in Triton 2.51: a composing python model that answers without a tensor leaves that
    ensemble output out; the others are answered."""
    x = np.arange(4, dtype=np.float32)
    assert list(infer(server, protocol, "hollowed", {"X": x})) == ["Y"]
    assert infer(server, protocol, "hollowed", {"X": x}, outputs=["Z"]) == {}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requests_the_ensemble_refuses(server: RunningServer, protocol: str) -> None:
    bad_shape = np.ones((1, 3), np.float32)
    message = fails(lambda: infer(server, protocol, "chain", {"X": bad_shape}), protocol, "invalid")
    assert "unexpected shape for input 'X' for model 'chain'" in message
    message = fails(
        lambda: infer(server, protocol, "chain", {"X": BATCH}, outputs=["twice"]),
        protocol,
        "invalid",
    )
    assert "unexpected inference output 'twice' for model 'chain'" in message


def test_statistics_count_ensemble_requests(server: RunningServer) -> None:
    chain, double = stats(server, "chain"), stats(server, "double")
    for _ in range(3):
        infer(server, "http", "chain", {"X": BATCH})
    after = stats(server, "chain")
    success = after["inference_stats"]["success"]
    assert success["count"] == chain["inference_stats"]["success"]["count"] + 3
    assert success["ns"] > chain["inference_stats"]["success"]["ns"]
    assert after["inference_count"] == chain["inference_count"] + 3 * 2  # batch 2 each
    assert after["execution_count"] == chain["execution_count"] + 3
    assert after["last_inference"] >= chain["last_inference"]
    # The composing model counts its own work: two steps of two items per request.
    double_after = stats(server, "double")
    assert double_after["inference_count"] == double["inference_count"] + 3 * 2 * 2
    # The ensemble's compute times are its steps' (Triton's sums), also per batch size.
    for part in ("compute_input", "compute_infer", "compute_output"):
        grew = after["inference_stats"][part]["ns"] - chain["inference_stats"][part]["ns"]
        assert grew == (
            double_after["inference_stats"][part]["ns"] - double["inference_stats"][part]["ns"]
        )
        count = after["inference_stats"][part]["count"]
        assert count == chain["inference_stats"][part]["count"] + 3
    by_size = {b["batch_size"]: b for b in after["batch_stats"]}
    assert by_size[2]["compute_infer"]["count"] >= 3

    raising = stats(server, "raising")["inference_stats"]
    fails(
        lambda: infer(server, "http", "raising", {"X": np.ones(4, np.float32)}), "http", "internal"
    )
    after_failure = stats(server, "raising")["inference_stats"]
    assert after_failure["fail"]["count"] == raising["fail"]["count"] + 1
    assert after_failure["success"]["count"] == raising["success"]["count"]


def test_all_statistics_include_ensembles(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        names = {m["name"] for m in client.get_inference_statistics()["model_stats"]}
    finally:
        client.close()
    assert {"chain", "diamond", "double", "add"} <= names


def test_metrics_count_ensemble_requests(server: RunningServer) -> None:
    def scrape() -> dict[tuple[str, str], float]:
        text = httpx.get(f"http://{server.http_url}/metrics").text
        return {
            (sample.name, sample.labels.get("model", "")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get("reason") in (None, "BACKEND")
        }

    before = scrape()
    for _ in range(2):
        infer(server, "http", "chain", {"X": BATCH})
    after = scrape()
    # (The parser names counter samples with a _total suffix that the text does not have.)
    success = ("nv_inference_request_success_total", "chain")
    assert after[success] == before.get(success, 0) + 2
    assert after[("nv_inference_count_total", "chain")] >= 4
    assert ("nv_inference_request_failure_total", "chain") in after
    assert ("inferd_request_duration_seconds_count", "chain") in after
    # Queues and instances belong to the composing models, not to the ensemble.
    assert ("inferd_queue_depth", "double") in after
    assert ("inferd_queue_depth", "chain") not in after


# ---- broken ensembles next to serving models -----------------------------------------------


def test_broken_ensembles_are_unavailable_with_reasons(
    tmp_path: Path, server_factory: Factory
) -> None:
    write_composing(tmp_path)
    write_python_model(tmp_path, "broken", "class TritonPythonModel:\n    def execute(self)\n", ROW)
    step = ("double", {"INPUT0": "X"}, {"OUTPUT0": "Y"})
    broken = {
        "missing_model": ensemble(X, {"Y": "FP32"}, ("nope", {"INPUT0": "X"}, {"OUTPUT0": "Y"})),
        "wrong_type": ensemble({"X": "INT32"}, {"Y": "FP32"}, step),
        "too_big": ensemble(X, {"Y": "FP32"}, step, max_batch_size=16),
        "no_such_input": ensemble(X, {"Y": "FP32"}, ("double", {"IN": "X"}, {"OUTPUT0": "Y"})),
        "failed_step_model": ensemble(
            X, {"Y": "FP32"}, ("broken", {"INPUT0": "X"}, {"OUTPUT0": "Y"})
        ),
        "cycle_a": ensemble(X, {"Y": "FP32"}, ("cycle_b", {"X": "X"}, {"Y": "Y"})),
        "cycle_b": ensemble(X, {"Y": "FP32"}, ("cycle_a", {"X": "X"}, {"Y": "Y"})),
        "no_steps": ensemble(X, {"Y": "FP32"}, step).split("ensemble_scheduling")[0],
        "cyclic_steps": ensemble(
            X,
            {"Y": "FP32"},
            ("add", {"A": "X", "B": "b"}, {"SUM": "a"}),
            ("add", {"A": "a", "B": "X"}, {"SUM": "b"}),
            ("double", {"INPUT0": "a"}, {"OUTPUT0": "Y"}),
        ),
    }
    for name, config in broken.items():
        write_ensemble(tmp_path, name, config)
    write_ensemble(tmp_path, "chain", CHAIN)
    server = server_factory(model_repositories=(tmp_path,))
    states = index(server)
    expected = {
        "missing_model": "ensemble missing_model contains models that are not available: nope",
        "wrong_type": "in ensemble wrong_type, ensemble tensor X: inconsistent data type: "
        "TYPE_INT32 is inferred from model wrong_type while TYPE_FP32 is inferred from model "
        "double",
        "too_big": "ensemble too_big allows maximum batch size 16, but it contains model double "
        "which only allows maximum batch size to be 8",
        "no_such_input": "in ensemble no_such_input, ensemble tensor X is mapping to "
        "non-existing input IN in model double",
        "failed_step_model": "ensemble failed_step_model contains models that are not "
        "available: broken ('broken': ",
        "cycle_a": "circular dependency between ensembles: cycle_a -> cycle_b -> cycle_a",
        "cycle_b": "circular dependency between ensembles: cycle_b -> cycle_a -> cycle_b",
        "no_steps": "ensemble scheduling must be set for ensemble no_steps whose platform is "
        "ensemble",
        "cyclic_steps": "circular dependency in ensemble 'cyclic_steps'",
    }
    for name, needle in expected.items():
        state, reason = states[name]
        assert state == "UNAVAILABLE", name
        assert needle in reason, (name, reason)
    # Everything else serves; the server is live but, strictly, not ready.
    assert states["chain"] == ("READY", "") and states["double"] == ("READY", "")
    assert infer(server, "http", "chain", {"X": BATCH})["Y"].tolist() == (4 * BATCH).tolist()
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_server_live() and not client.is_server_ready()
        assert not client.is_model_ready("too_big")
    finally:
        client.close()
    for protocol in PROTOCOLS:
        call = partial(infer, server, protocol, "too_big", {"X": BATCH})
        assert "allows maximum batch size 16" in fails(call, protocol, "unavailable")


# ---- lifecycle ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_explicit_load_and_unload_with_composing_models(
    tmp_path: Path, server_factory: Factory, protocol: str
) -> None:
    write_composing(tmp_path)
    write_ensemble(tmp_path, "chain", CHAIN)
    write_ensemble(tmp_path, "diamond", DIAMOND)
    server = server_factory(model_repositories=(tmp_path,), model_control_mode="explicit")
    client = client_for(server, protocol)
    try:
        client.load_model("diamond")  # loads double, identity and add first, as Triton does
        states = index(server)
        for name in ("diamond", "double", "identity", "add"):
            assert states[name] == ("READY", ""), name
        assert "chain" not in {n for n, s in states.items() if s[0]}
        assert (
            infer(server, protocol, "diamond", {"X": BATCH})["Y"].tolist() == (3 * BATCH).tolist()
        )

        client.load_model("chain")  # "double" is already serving: it stays as it is
        client.load_model("identity")  # asked for by name: no longer only a dependency
        client.unload_model("diamond", unload_dependents=True)
        # As in Triton 2.51, an unload returns before the versions are freed; the models
        # diamond loaded for itself go once its requests are done.
        wait_for(lambda: index(server)["add"] == ("UNAVAILABLE", "unloaded"))
        states = index(server)
        assert states["diamond"] == ("UNAVAILABLE", "unloaded")
        assert states["add"] == ("UNAVAILABLE", "unloaded")  # only diamond ran it
        assert states["double"] == ("READY", "")  # chain still runs it
        assert states["identity"] == ("READY", "")  # loaded by name
        assert client.is_server_ready()

        # Without unload_dependents, composing models stay.
        client.unload_model("chain")
        assert index(server)["double"] == ("READY", "")
        client.load_model("chain")

        # A composing model that goes takes the ensemble down with it, and back.
        client.unload_model("double")
        wait_for(lambda: index(server)["double"][0] == "UNAVAILABLE")
        state, reason = index(server)["chain"]
        assert state == "UNAVAILABLE"
        assert (
            reason
            == "ensemble chain contains models that are not available: double ('double': unloaded)"
        )
        assert not client.is_model_ready("chain")
        message = fails(
            lambda: infer(server, protocol, "chain", {"X": BATCH}), protocol, "unavailable"
        )
        assert "not available: double" in message
        client.load_model("double")
        assert index(server)["chain"] == ("READY", "")
        assert infer(server, protocol, "chain", {"X": BATCH})["Y"].tolist() == (4 * BATCH).tolist()
    finally:
        client.close()


def test_unloading_an_ensemble_lets_its_requests_finish(
    tmp_path: Path, server_factory: Factory
) -> None:
    repo, marks = tmp_path / "repo", tmp_path / "marks"
    marks.mkdir()
    write_python_model(repo, "gate", GATE.format(folder=str(marks)), ROW)
    gated = ensemble(
        X, {"Y": "FP32"}, ("gate", {"INPUT0": "X"}, {"OUTPUT0": "Y"}), max_batch_size=0
    )
    write_ensemble(repo, "gated", gated)
    server = server_factory(model_repositories=(repo,), model_control_mode="explicit")
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.arange(4, dtype=np.float32)
    try:
        client.load_model("gated")
        with ThreadPoolExecutor(1) as pool:
            request = pool.submit(infer, server, "http", "gated", {"X": x})
            wait_for((marks / "started").exists)
            client.unload_model("gated")  # returns at once, as in Triton 2.51
            assert not request.done()  # the request is still in its step
            assert index(server)["gated"] == ("UNLOADING", "")
            message = fails(lambda: infer(server, "http", "gated", {"X": x}), "http", "unavailable")
            assert message.endswith("which has no version at ready state: unloading")
            (marks / "release").touch()
            assert request.result(10)["Y"].tolist() == x.tolist()
        wait_for(lambda: index(server)["gated"] == ("UNAVAILABLE", "unloaded"))
        assert index(server)["gate"] == ("READY", "")
    finally:
        client.close()


def test_explicit_start_loads_composing_models(tmp_path: Path, server_factory: Factory) -> None:
    write_composing(tmp_path)
    write_ensemble(tmp_path, "chain", CHAIN)
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="explicit", load_models=("chain",)
    )
    states = index(server)
    assert states["chain"] == ("READY", "") and states["double"] == ("READY", "")
    assert states["identity"] == ("", "")  # not needed: found, never loaded
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.unload_model("chain", unload_dependents=True)
    finally:
        client.close()
    wait_for(lambda: index(server)["double"] == ("UNAVAILABLE", "unloaded"))


def test_a_failed_explicit_load_says_why(tmp_path: Path, server_factory: Factory) -> None:
    write_composing(tmp_path)
    write_ensemble(tmp_path, "lonely", ensemble(X, {"Y": "FP32"}, ("nope", {"I": "X"}, {"O": "Y"})))
    server = server_factory(model_repositories=(tmp_path,), model_control_mode="explicit")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        message = fails(lambda: client.load_model("lonely"), "grpc", "invalid")
    finally:
        client.close()
    assert message.startswith("load failed for model 'lonely': ")  # as Triton 2.51 starts it
    assert (
        "ensemble lonely contains models that are not available: nope ('nope': not found)"
        in message
    )


def test_poll_mode_ensembles_follow_their_models(tmp_path: Path, server_factory: Factory) -> None:
    write_composing(tmp_path)
    write_ensemble(tmp_path, "chain", CHAIN)
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="poll", repository_poll_secs=0.1
    )
    assert index(server)["chain"] == ("READY", "")
    shutil.rmtree(tmp_path / "double")
    wait_for(lambda: index(server)["chain"][0] == "UNAVAILABLE")
    assert "contains models that are not available: double" in index(server)["chain"][1]
    write_model(tmp_path, "double", double_model(), DOUBLE)
    wait_for(lambda: index(server)["chain"] == ("READY", ""))
    assert infer(server, "http", "chain", {"X": BATCH})["Y"].tolist() == (4 * BATCH).tolist()
    # A composing model reloaded with a config that no longer fits: the ensemble says so.
    (tmp_path / "double" / "config.pbtxt").write_text(
        DOUBLE.replace("max_batch_size: 8", "max_batch_size: 2")
    )
    wait_for(lambda: index(server)["chain"][0] == "UNAVAILABLE")
    assert "allows maximum batch size 8, but it contains model double" in index(server)["chain"][1]
