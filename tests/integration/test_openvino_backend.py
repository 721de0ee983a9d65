"""OpenVINO models (backend "openvino") in a Triton repository, converted here from real ONNX
graphs by the installed openvino, served by a real server and driven by the real tritonclient
over HTTP and gRPC: IR files, ONNX read by OpenVINO, auto-complete, batching (also of a model
saved with a fixed batch of 1), datatype conversion, parameters, and load errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.models import double_model, identity_model
from tests.sequence_models import accumulator_config, accumulator_model
from tests.waiting import wait_for
from tests.wire import PROTOCOLS, client_for, infer, load_failure

ov = pytest.importorskip("openvino")

Factory = Callable[..., RunningServer]

DOUBLE = """
backend: "openvino"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
dynamic_batching { max_queue_delay_microseconds: 20000 }
parameters { key: "NUM_STREAMS" value: { string_value: "1" } }
parameters { key: "PERFORMANCE_HINT" value: { string_value: "latency" } }
parameters { key: "NOT_A_KNOWN_KEY" value: { string_value: "ignored, as in Triton" } }
"""


def write_ir(folder: Path, graph: onnx.ModelProto) -> Path:
    """<folder>/model.xml and model.bin, converted from `graph` by OpenVINO (full precision)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, folder / "source.onnx")
    ov.save_model(ov.convert_model(folder / "source.onnx"), folder / "model.xml", False)
    (folder / "source.onnx").unlink()
    return folder / "model.xml"


def write_model(repo: Path, name: str, graph: onnx.ModelProto, config: str | None) -> None:
    write_ir(repo / name / "1", graph)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("openvino")
    write_model(repo, "double", double_model(), DOUBLE)
    write_model(repo, "completed", double_model(), None)  # no config: all from the IR
    # Saved with a fixed batch of 1: served with any batch size up to max_batch_size.
    fixed = identity_model(shape=(1, 4))
    write_model(
        repo,
        "fixed",
        fixed,
        'backend: "openvino"\nmax_batch_size: 4\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]\n',
    )
    # OpenVINO reads ONNX itself: Triton's "non-default model format".
    (repo / "onnx" / "1").mkdir(parents=True)
    onnx.save(identity_model(TensorProto.INT64), repo / "onnx" / "1" / "model.onnx")
    (repo / "onnx" / "config.pbtxt").write_text(
        'backend: "openvino"\ndefault_model_filename: "model.onnx"\nmax_batch_size: 2\n'
        'input [{ name: "INPUT0" data_type: TYPE_INT64 dims: [ 4 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_INT64 dims: [ 4 ] }]\n'
    )
    # The config asks for FP16 where the model has FP32: OpenVINO converts both ways.
    write_model(
        repo,
        "half",
        identity_model(),
        'backend: "openvino"\nmax_batch_size: 2\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP16 dims: [ 4 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP16 dims: [ 4 ] }]\n',
    )
    # A stateful model: the sequence batcher's controls and implicit state are inputs too.
    sequence = accumulator_config("sequence").replace(
        'platform: "onnxruntime_onnx"', 'backend: "openvino"'
    )
    write_model(repo, "sequence", accumulator_model(), sequence)
    running = start_server(replace(TEST_SETTINGS, model_repositories=(repo,)))
    yield running
    running.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ir_models_answer_and_batch(server: RunningServer, protocol: str) -> None:
    def one(i: int) -> tuple[int, dict[str, np.ndarray]]:
        x = np.full((1, 4), i, dtype=np.float32)
        return i, infer(server, protocol, "double", {"INPUT0": x})

    with ThreadPoolExecutor(8) as pool:
        for i, outputs in pool.map(one, range(16)):
            np.testing.assert_array_equal(outputs["OUTPUT0"], np.full((1, 4), 2 * i))
            np.testing.assert_array_equal(outputs["OUTPUT1"], np.full((1, 4), i))
    client = client_for(server, "http")
    try:
        stats = client.get_inference_statistics("double")["model_stats"][0]
    finally:
        client.close()
    assert stats["execution_count"] < stats["inference_count"]  # some requests shared a batch


def test_a_model_saved_with_batch_one_takes_any_batch(server: RunningServer) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(infer(server, "grpc", "fixed", {"INPUT0": x})["OUTPUT0"], x)


def test_onnx_files_and_converted_datatypes(server: RunningServer) -> None:
    x = np.array([[1, 2, 3, 4]], dtype=np.int64)
    np.testing.assert_array_equal(infer(server, "http", "onnx", {"INPUT0": x})["OUTPUT0"], x)
    half = np.array([[0.5, 1.5, -2, 4]], dtype=np.float16)
    out = infer(server, "http", "half", {"INPUT0": half})["OUTPUT0"]
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, half)


def test_config_is_completed_from_the_model(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        config = client.get_model_config("completed")
    finally:
        client.close()
    assert config["backend"] == "openvino"
    assert config["max_batch_size"] == 4  # --backend-config default-max-batch-size
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [-1])
    ]
    assert [t["name"] for t in config["output"]] == ["OUTPUT0", "OUTPUT1"]
    x = np.ones((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(
        infer(server, "http", "completed", {"INPUT0": x})["OUTPUT0"], 2 * x
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            DOUBLE.replace('name: "INPUT0"', 'name: "IMAGE"'),
            "unexpected inference input 'IMAGE', allowed inputs are: INPUT0",
        ),
        (
            DOUBLE.replace('name: "OUTPUT1"', 'name: "SCORES"'),
            "unexpected inference output 'SCORES', allowed outputs are: OUTPUT0, OUTPUT1",
        ),
        (
            DOUBLE.replace('string_value: "1"', 'string_value: "lots"'),
            "expected the parameter 'NUM_STREAMS' to be either AUTO/NUMA/<int_value>, got lots",
        ),
        (
            DOUBLE.replace(
                "data_type: TYPE_FP32 dims: [ 4 ] }]", "data_type: TYPE_STRING dims: [ 4 ] }]", 1
            ),
            "unsupported datatype TYPE_STRING for input 'INPUT0'",
        ),
        (
            DOUBLE + 'default_model_filename: "missing.xml"\n',
            "unable to find",
        ),
    ],
)
def test_load_errors_in_tritons_words(
    tmp_path: Path, server_factory: Factory, config: str, message: str
) -> None:
    write_model(tmp_path, "broken", double_model(), config)
    server = server_factory(model_repositories=(tmp_path,))
    assert message in load_failure(server)


def test_instances_share_one_compiled_model(tmp_path: Path, server_factory: Factory) -> None:
    from inferd.backends import openvino

    config = DOUBLE + "instance_group [{ count: 3 kind: KIND_CPU }]\n"
    write_model(tmp_path, "shared", double_model(), config)
    before = len(openvino._COMPILED.users())
    server = server_factory(model_repositories=(tmp_path,), model_control_mode="explicit")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.load_model("shared")
        assert len(openvino._COMPILED.users()) == before + 1  # compiled once, as Triton does

        def one(i: int) -> np.ndarray:
            x = np.full((1, 4), i, dtype=np.float32)
            return infer(server, "http", "shared", {"INPUT0": x})["OUTPUT0"]

        with ThreadPoolExecutor(6) as pool:  # the instances' requests run side by side
            for i, out in enumerate(pool.map(one, range(12))):
                np.testing.assert_array_equal(out, np.full((1, 4), 2 * i))
        client.unload_model("shared")
        wait_for(lambda: len(openvino._COMPILED.users()) == before)  # with the last instance
    finally:
        client.close()


def test_a_stateful_model_keeps_its_state(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:

        def step(sequence: int, value: int, **flags: bool) -> int:
            given = httpclient.InferInput("INPUT", [1, 1], "INT32")
            given.set_data_from_numpy(np.array([[value]], np.int32))
            result = client.infer("sequence", [given], sequence_id=sequence, **flags)
            return int(result.as_numpy("OUTPUT")[0, 0])

        assert step(1, 1, sequence_start=True) == 1
        assert step(2, 10, sequence_start=True) == 10  # another sequence, its own state
        assert step(1, 2) == 3
        assert step(2, 5, sequence_end=True) == 15
        assert step(1, 4, sequence_end=True) == 7
    finally:
        client.close()
