"""Stateful models (sequence batching) behind a real server, driven by the real tritonclient
over HTTP, gRPC ModelInfer and gRPC ModelStreamInfer: an ONNX accumulator with implicit state
and a python-backend model that reports what the sequence batcher fed it."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.models import identity_model, write_model
from tests.perf_analyzer import needs_perf_analyzer, run_perf_analyzer
from tests.python_models import write_python_model
from tests.sequence_models import (
    FORWARD_CONFIG,
    FORWARD_PY,
    SEQUENCE_PY,
    accumulator_config,
    accumulator_model,
    sequence_py_config,
)
from tests.wire import PROTOCOLS, client_for, fails, infer

IDLE = "max_sequence_idle_microseconds: 50000"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sequence_models")
    model = accumulator_model()
    write_model(root, "acc_direct", model, accumulator_config("acc_direct", max_batch_size=2))
    oldest = "oldest { max_candidate_sequences: 3 max_queue_delay_microseconds: 1000 }"
    write_model(root, "acc_oldest", model, accumulator_config("acc_oldest", oldest))
    write_model(root, "acc_idle", model, accumulator_config("acc_idle", extra=IDLE))
    initial = 'initial_state { dims: [1] data_file: "hundred.bin" name: "hundred" }'
    folder = write_model(
        root, "acc_initial", model, accumulator_config("acc_initial", initial=initial)
    )
    (folder / "initial_state").mkdir()
    (folder / "initial_state" / "hundred.bin").write_bytes(np.array([100], "<i4").tobytes())
    write_python_model(root, "seq_py", SEQUENCE_PY, sequence_py_config("seq_py"))
    write_python_model(
        root, "seq_py_batched", SEQUENCE_PY, sequence_py_config("seq_py_batched", 2, "TYPE_UINT64")
    )
    direct = sequence_py_config("seq_py_direct", 2, "TYPE_UINT64", strategy="")
    write_python_model(root, "seq_py_direct", SEQUENCE_PY, direct)
    write_model(root, "plain", identity_model())
    write_python_model(root, "forward", FORWARD_PY, FORWARD_CONFIG)
    (root / "acc_ensemble" / "1").mkdir(parents=True)
    (root / "acc_ensemble" / "config.pbtxt").write_text(ACC_ENSEMBLE)
    return root


# An ensemble around a stateful model: the request's sequence parameters reach its step.
ACC_ENSEMBLE = """
platform: "ensemble"
max_batch_size: 2
input [{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }]
output [{ name: "TOTAL" data_type: TYPE_INT32 dims: [ 1 ] }]
ensemble_scheduling { step [{
  model_name: "acc_direct" model_version: -1
  input_map { key: "INPUT" value: "INPUT" } output_map { key: "OUTPUT" value: "TOTAL" }
}] }
"""


@pytest.fixture(scope="module")
def server(repo: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The python models in the server's process, or where a test's parameter says."""
    isolation = getattr(request, "param", "thread")
    running = start_server(
        replace(TEST_SETTINGS, model_repositories=(repo,), python_isolation=isolation)
    )
    yield running
    running.stop()


# For the tests of python sequence models: in the server's process, then in stub processes.
ISOLATIONS = pytest.mark.parametrize("server", ["thread", "process"], indirect=True)


def step(
    server: RunningServer, protocol: str, model: str, value: int, seq: int | str, **flags: bool
) -> dict[str, np.ndarray]:
    batched = model != "seq_py"
    shape = (1, 1) if batched else (1,)
    x = np.full(shape, value, np.int32)
    options: dict[str, Any] = {"sequence_id": seq, **flags}
    return infer(server, protocol, model, {"INPUT": x}, **options)


def run_sequence(
    server: RunningServer, protocol: str, model: str, seq: int, values: list[int]
) -> list[int]:
    totals = []
    for i, value in enumerate(values):
        flags = {"sequence_start": i == 0, "sequence_end": i == len(values) - 1}
        totals.append(int(step(server, protocol, model, value, seq, **flags)["OUTPUT"].item()))
    return totals


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_implicit_state_and_controls(server: RunningServer, protocol: str) -> None:
    first = step(server, protocol, "acc_direct", 5, 41, sequence_start=True)
    other = step(server, protocol, "acc_direct", 100, 42, sequence_start=True)
    second = step(server, protocol, "acc_direct", 2, 41)
    last = step(server, protocol, "acc_direct", 3, 41, sequence_end=True)
    assert [first["OUTPUT"].item(), second["OUTPUT"].item(), last["OUTPUT"].item()] == [5, 7, 10]
    assert other["OUTPUT"].item() == 100  # its own state
    assert [first["START_SEEN"].item(), second["START_SEEN"].item()] == [1, 0]
    assert first["READY_SEEN"].item() == 1.0 and first["READY_SEEN"].dtype == np.float32
    assert second["CORRID_SEEN"].item() == 41 and second["CORRID_SEEN"].dtype == np.uint64
    assert "STATE_OUT" not in first  # state outputs are not answered
    step(server, protocol, "acc_direct", 0, 42, sequence_end=True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_initial_state_from_a_data_file(server: RunningServer, protocol: str) -> None:
    assert run_sequence(server, protocol, "acc_initial", 8, [1, 2]) == [101, 103]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_start_on_a_live_sequence_starts_it_again(server: RunningServer, protocol: str) -> None:
    step(server, protocol, "acc_direct", 5, 43, sequence_start=True)
    again = step(server, protocol, "acc_direct", 1, 43, sequence_start=True)
    assert again["OUTPUT"].item() == 1  # back to the initial state
    step(server, protocol, "acc_direct", 0, 43, sequence_end=True)


@pytest.mark.parametrize("model", ["acc_direct", "acc_oldest", "seq_py"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_concurrent_sequences_keep_their_own_order_and_state(
    server: RunningServer, protocol: str, model: str
) -> None:
    # More sequences than slots: the others wait in the backlog until one ends.
    count = 7
    with ThreadPoolExecutor(count) as pool:
        results = list(
            pool.map(
                lambda s: run_sequence(server, protocol, model, 1000 + s, [s, 1, 2, 3, 4]),
                range(1, count + 1),
            )
        )
    for s, totals in enumerate(results, start=1):
        assert totals == [s, s + 1, s + 3, s + 6, s + 10]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sequence_errors(server: RunningServer, protocol: str) -> None:
    x = {"INPUT": np.ones((1, 1), np.int32)}
    message = fails(lambda: infer(server, protocol, "acc_direct", x), protocol, "invalid")
    assert message == (
        "inference request to model 'acc_direct' must specify a non-zero or non-empty "
        "correlation ID"
    )
    message = fails(
        lambda: infer(server, protocol, "acc_direct", x, sequence_id=77), protocol, "invalid"
    )
    assert message == (
        "inference request for sequence 77 to model 'acc_direct' must specify the START flag "
        "on the first request of the sequence"
    )
    two = {"INPUT": np.ones((2, 1), np.int32)}
    message = fails(
        lambda: infer(server, protocol, "acc_direct", two, sequence_id=78, sequence_start=True),
        protocol,
        "invalid",
    )
    assert message == (
        "inference request to model 'acc_direct' must specify batch-size 1 due to "
        "requirements of sequence batcher"
    )
    message = fails(
        lambda: infer(server, protocol, "acc_direct", x, sequence_id="abc", sequence_start=True),
        protocol,
        "invalid",
    )
    assert "string sequence_id 'abc'" in message and "TYPE_UINT64" in message
    # After END the ID is free: a request without START is refused.
    step(server, protocol, "acc_direct", 1, 79, sequence_start=True, sequence_end=True)
    fails(lambda: step(server, protocol, "acc_direct", 1, 79), protocol, "invalid")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_idle_sequences_are_released(server: RunningServer, protocol: str) -> None:
    step(server, protocol, "acc_idle", 1, 5, sequence_start=True)
    # Released after 50 ms without a request. Each try is a request too, so wait longer each
    # time: no timing is asserted beyond "eventually".
    wait = 0.1
    while True:
        time.sleep(wait)
        try:
            step(server, protocol, "acc_idle", 1, 5)
        except Exception as exc:
            assert "must specify the START flag" in str(exc)
            break
        wait *= 2
        assert wait < 10, "the idle sequence was never released"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sequence_id_to_a_model_without_sequences_is_ignored(
    server: RunningServer, protocol: str
) -> None:
    x = np.ones((1, 4), np.float32)
    out = infer(server, protocol, "plain", {"INPUT0": x}, sequence_id=9, sequence_start=True)
    assert out["OUTPUT0"].tolist() == x.tolist()


def info(result: dict[str, np.ndarray]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(result["INFO"].ravel()[0])
    return loaded


@ISOLATIONS
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_python_model_sees_controls_and_request_flags(server: RunningServer, protocol: str) -> None:
    first = step(server, protocol, "seq_py", 4, "user-7", sequence_start=True)
    last = step(server, protocol, "seq_py", 6, "user-7", sequence_end=True)
    assert [first["OUTPUT"].item(), last["OUTPUT"].item()] == [4, 10]
    assert info(first) == {
        "START": 1,
        "END": False,
        "READY": 1,
        "CORRID": "user-7",
        "correlation_id": "user-7",
        "flags": 1,
        "parameters": {},
        "batch": [[1, "user-7"]],
    }
    assert info(last)["flags"] == 2 and info(last)["END"] is True
    numeric = step(
        server, protocol, "seq_py_batched", 1, 12, sequence_start=True, sequence_end=True
    )
    assert info(numeric)["CORRID"] == 12 and info(numeric)["correlation_id"] == 12


@ISOLATIONS
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bls_calls_carry_the_sequence(server: RunningServer, protocol: str) -> None:
    assert run_sequence(server, protocol, "forward", 900, [5, 3]) == [5, 8]
    # The refused call's error, passed on by the model: the caller's internal error, as in
    # Triton (the client's request to "forward" was fine).
    message = fails(lambda: step(server, protocol, "forward", 1, 900), protocol, "internal")
    assert message.startswith("Model ") and "must specify the START flag" in message


@ISOLATIONS
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_direct_pads_the_slots_without_a_request(server: RunningServer, protocol: str) -> None:
    step(server, protocol, "seq_py_direct", 1, 31, sequence_start=True)  # slot 0
    second = step(server, protocol, "seq_py_direct", 2, 32, sequence_start=True)  # slot 1
    # Slot 0 has nothing to run: the model sees a padding row with READY=0 and no request id,
    # and answers only the real request.
    assert info(second)["batch"] == [[0, 0], [1, 32]]
    both_end = step(server, protocol, "seq_py_direct", 3, 31, sequence_end=True)
    assert info(both_end)["batch"] == [[1, 31], [0, 0]]
    assert both_end["OUTPUT"].item() == 4
    alone = step(server, protocol, "seq_py_direct", 4, 32, sequence_end=True)
    assert info(alone)["batch"] == [[0, 0], [1, 32]] and alone["OUTPUT"].item() == 6


def test_grpc_stream_runs_sequences_in_order(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for seq in (1, 2):
            for i, value in enumerate([seq, 1, 2, 3]):
                tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
                tensor.set_data_from_numpy(np.full((1, 1), value, np.int32))
                client.async_stream_infer(
                    "acc_oldest",
                    [tensor],
                    request_id=f"{seq}-{i}",
                    sequence_id=500 + seq,
                    sequence_start=i == 0,
                    sequence_end=i == 3,
                )
        got: dict[str, int] = {}
        for _ in range(8):
            result, error = answers.get(timeout=30)
            assert error is None, error
            got[result.get_response().id] = int(result.as_numpy("OUTPUT").item())
    finally:
        client.stop_stream()
        client.close()
    assert got == {"1-0": 1, "1-1": 2, "1-2": 4, "1-3": 7, "2-0": 2, "2-1": 3, "2-2": 5, "2-3": 8}


def test_config_statistics_and_extension(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        run_sequence(server, "http", "seq_py", 7, [1, 2])
        config = client.get_model_config("acc_direct")
        stats = client.get_inference_statistics("seq_py")["model_stats"][0]
        extensions = client.get_server_metadata()["extensions"]
    finally:
        client.close()
    # Auto-complete leaves the control and state tensors out of the config's tensors.
    assert [t["name"] for t in config["input"]] == ["INPUT"]
    assert "STATE_OUT" not in [t["name"] for t in config["output"]]
    assert config["sequence_batching"]["max_sequence_idle_microseconds"] == 1_000_000
    assert int(stats["inference_count"]) >= 2
    assert int(stats["inference_stats"]["success"]["count"]) >= 2
    assert "sequence" in extensions


def test_unload_drains_sequences(tmp_path: Path) -> None:
    write_model(tmp_path, "acc", accumulator_model(), accumulator_config("acc"))
    settings = replace(
        TEST_SETTINGS,
        model_repositories=(tmp_path,),
        model_control_mode="explicit",
        load_models=("acc",),
    )
    server = start_server(settings)
    try:
        step(server, "http", "acc", 1, 3, sequence_start=True)  # left open
        client = client_for(server, "http")
        client.unload_model("acc")
        assert not client.is_model_ready("acc")
        fails(lambda: step(server, "grpc", "acc", 1, 3), "grpc", "unavailable")
        client.close()
    finally:
        server.stop()


@pytest.mark.slow
@needs_perf_analyzer
@pytest.mark.parametrize(
    ("protocol", "model", "streaming"),
    [
        ("http", "acc_direct", False),
        ("grpc", "acc_oldest", False),
        ("grpc", "acc_direct", True),
        ("grpc", "seq_py", True),
    ],
)
def test_perf_analyzer_drives_sequences(
    server: RunningServer, protocol: str, model: str, streaming: bool
) -> None:
    """perf_analyzer sees sequence_batching in the config and sends sequences itself."""
    url = server.http_url if protocol == "http" else server.grpc_url
    flags = ["--concurrency-range", "4:4", "-p", "300", "-r", "5"]
    flags += ["--sequence-length", "4", "--sequence-id-range", "100:200"]
    if streaming:
        flags.append("--streaming")
    output = run_perf_analyzer(model, url, protocol, *flags)
    assert "error" not in output.lower()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_sequence_runs_through_an_ensemble(server: RunningServer, protocol: str) -> None:
    totals = []
    for i, value in enumerate([5, 2, 3]):
        flags: dict[str, Any] = {"sequence_start": i == 0, "sequence_end": i == 2}
        x = np.full((1, 1), value, np.int32)
        answer = infer(server, protocol, "acc_ensemble", {"INPUT": x}, sequence_id=77, **flags)
        totals.append(int(answer["TOTAL"].item()))
    assert totals == [5, 7, 10]
    message = fails(
        lambda: infer(server, protocol, "acc_ensemble", {"INPUT": x}), protocol, "invalid"
    )
    assert message == (
        "in ensemble 'acc_ensemble', step model 'acc_direct': inference request to model "
        "'acc_direct' must specify a non-zero or non-empty correlation ID"
    )
