"""TensorFlow SavedModels and GraphDefs through a real server and the real clients (skipped
where TensorFlow is not installed: run tools/extra-check tensorflow)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

pytest.importorskip("tensorflow")

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.tf_models import (
    WEIGHTS,
    accumulator_graphdef,
    accumulator_model,
    add_matmul_model,
    flat_model,
    graphdef_model,
    graphdef_with_init_model,
    reshape_model,
    row_sum_model,
    strings_model,
)

ADD_CONFIG = """
platform: "tensorflow_savedmodel"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [{ name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] }]
"""

STRINGS_CONFIG = """
platform: "tensorflow_savedmodel"
max_batch_size: 4
input [
  { name: "COUNT_IN" data_type: TYPE_INT32 dims: [ 2 ] },
  { name: "TEXT" data_type: TYPE_STRING dims: [ 2 ] }
]
output [
  { name: "COUNT" data_type: TYPE_INT32 dims: [ 2 ] },
  { name: "UPPER" data_type: TYPE_STRING dims: [ 2 ] }
]
"""

GRAPHDEF_CONFIG = """
platform: "tensorflow_graphdef"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }]
"""

# The sequence batcher feeds START and STATE_IN: the config names neither (nor STATE_OUT).
SEQUENCE_BATCHING = """
max_batch_size: 4
sequence_batching {
  control_input [{
    name: "START" control [{ kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] }]
  }]
  state [{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [1] }]
}
"""
SEQUENCE_CONFIG = 'platform: "tensorflow_savedmodel"' + SEQUENCE_BATCHING
SEQUENCE_GRAPHDEF_CONFIG = (
    'platform: "tensorflow_graphdef"'
    + SEQUENCE_BATCHING
    + 'input [{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }]\n'
    + 'output [{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }]\n'
)

PROTOCOLS = [httpclient, grpcclient]


def _model(root: Path, name: str, config: str | None, source: Path) -> None:
    version = root / name / "1"
    version.mkdir(parents=True)
    target = version / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def tf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One repository of good TensorFlow models beside broken ones, served once."""
    built = tmp_path_factory.mktemp("tf_built")
    add = add_matmul_model(built / "add" / "model.savedmodel")
    strings = strings_model(built / "strings" / "model.savedmodel")
    rows = row_sum_model(built / "rows" / "model.savedmodel")
    flat = flat_model(built / "flat" / "model.savedmodel")
    graph = graphdef_model(built / "graph" / "model.graphdef")
    reshape = reshape_model(built / "reshape" / "model.savedmodel")
    with_init = graphdef_with_init_model(built / "with_init" / "model.graphdef")
    root = tmp_path_factory.mktemp("tf_repo")
    _model(root, "auto", None, add)  # no config.pbtxt: completed from the signature
    batching = "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"
    _model(root, "add", ADD_CONFIG + batching + "instance_group [{ count: 2 }]", add)
    _model(root, "strings", STRINGS_CONFIG, strings)
    _model(root, "rows", None, rows)
    _model(root, "flat", None, flat)
    _model(root, "reshape", None, reshape)
    _model(root, "graph", GRAPHDEF_CONFIG, graph)
    init_ops = 'parameters { key: "TF_INIT_OPS_FILE" value { string_value: "init_ops.json" } }'
    _model(root, "graph_init", GRAPHDEF_CONFIG + init_ops, with_init)
    (root / "graph_init" / "init_ops.json").write_text('{"init_ops": ["init"]}')
    signature = 'parameters { key: "TF_SIGNATURE_DEF" value { string_value: "double" } }'
    _model(root, "double", signature, add)
    _model(root, "on_gpu", ADD_CONFIG + "instance_group [{ kind: KIND_GPU }]", add)
    # Broken: each must be UNAVAILABLE with a reason naming the model and the tensor.
    _model(root, "bad_name", ADD_CONFIG.replace('"INPUT1"', '"INPUT9"'), add)
    _model(
        root,
        "bad_type",
        ADD_CONFIG.replace("TYPE_FP32 dims: [ 4 ] },\n", "TYPE_INT32 dims: [ 4 ] },\n"),
        add,
    )
    _model(
        root,
        "bad_dims",
        ADD_CONFIG.replace(
            '"SUM" data_type: TYPE_FP32 dims: [ 4 ]', '"SUM" data_type: TYPE_FP32 dims: [ 5 ]'
        ),
        add,
    )
    _model(
        root,
        "missing_input",
        ADD_CONFIG.replace(',\n  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }', ""),
        add,
    )
    _model(root, "bad_signature", signature.replace("double", "nope"), add)
    _model(root, "bad_tag", signature.replace("TF_SIGNATURE_DEF", "TF_GRAPH_TAG"), add)
    _model(root, "graph_no_config", None, graph)
    _model(root, "graph_bad_name", GRAPHDEF_CONFIG.replace('"x"', '"y"'), graph)
    _model(root, "tf_seq", SEQUENCE_CONFIG, accumulator_model(built / "seq" / "model.savedmodel"))
    graph_seq = accumulator_graphdef(built / "seq_graph" / "model.graphdef")
    _model(root, "tf_seq_graph", SEQUENCE_GRAPHDEF_CONFIG, graph_seq)
    corrupt = root / "corrupt" / "1" / "model.savedmodel"
    corrupt.mkdir(parents=True)
    (corrupt / "saved_model.pb").write_bytes(b"not a protobuf")
    server = start_server(
        replace(
            TEST_SETTINGS,
            model_repositories=(root,),
            strict_readiness=False,
            gpu_fallback_to_cpu=True,
        )
    )
    yield server
    server.stop()


def _client(protocol: ModuleType, server: RunningServer) -> Any:
    url = server.http_url if protocol is httpclient else server.grpc_url
    return protocol.InferenceServerClient(url)


def _input(protocol: ModuleType, name: str, array: np.ndarray, datatype: str) -> Any:
    tensor = protocol.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _states(server: RunningServer) -> dict[str, tuple[str, str]]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        return {
            e["name"]: (e.get("state", ""), e.get("reason", ""))
            for e in client.get_model_repository_index()
        }
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_savedmodel_with_two_outputs(tf_server: RunningServer, protocol: ModuleType) -> None:
    client = _client(protocol, tf_server)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.full((3, 4), 0.5, np.float32)
    inputs = [_input(protocol, "INPUT0", a, "FP32"), _input(protocol, "INPUT1", b, "FP32")]
    result = client.infer("auto", inputs)
    np.testing.assert_allclose(result.as_numpy("SUM"), a + b)
    np.testing.assert_allclose(result.as_numpy("PRODUCT"), a @ WEIGHTS, rtol=1e-6)
    # Asking for one output returns that one only.
    only = client.infer("auto", inputs, outputs=[protocol.InferRequestedOutput("PRODUCT")])
    assert only.as_numpy("SUM") is None
    assert only.as_numpy("PRODUCT").shape == (3, 4)


def test_autocomplete_from_the_signature(tf_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(tf_server.http_url)
    config = client.get_model_config("auto")
    rows = client.get_model_config("rows")
    flat = client.get_model_config("flat")
    client.close()
    assert config["platform"] == "tensorflow_savedmodel"
    assert config["max_batch_size"] == 4  # Triton's default-max-batch-size, as for ONNX
    assert "dynamic_batching" in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [4]),
        ("INPUT1", "TYPE_FP32", [4]),
    ]
    assert sorted(t["name"] for t in config["output"]) == ["PRODUCT", "SUM"]
    # Variable dims stay variable; a scalar per batch item is written dims [1].
    assert {t["name"]: t["dims"] for t in rows["input"] + rows["output"]} == {
        "X": [-1],
        "SCALED": [-1],
        "TOTAL": [1],
    }
    # A fixed first dim: the model cannot batch.
    assert flat["max_batch_size"] == 0
    assert flat["input"][0]["dims"] == [3]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_int32_and_bytes(tf_server: RunningServer, protocol: ModuleType) -> None:
    client = _client(protocol, tf_server)
    counts = np.array([[1, 2], [3, -4]], np.int32)
    text = np.array([[b"ab", b"c"], [b"", b"xyz\x00"]], dtype=object)
    result = client.infer(
        "strings",
        [_input(protocol, "COUNT_IN", counts, "INT32"), _input(protocol, "TEXT", text, "BYTES")],
    )
    assert result.as_numpy("COUNT").tolist() == [[2, 4], [6, -8]]
    assert result.as_numpy("UPPER").tolist() == [[b"AB", b"C"], [b"", b"XYZ\x00"]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_variable_dims_and_scalar_items(tf_server: RunningServer, protocol: ModuleType) -> None:
    client = _client(protocol, tf_server)
    for width in (1, 5):
        x = np.arange(2 * width, dtype=np.float32).reshape(2, width)
        result = client.infer("rows", [_input(protocol, "X", x, "FP32")])
        np.testing.assert_allclose(result.as_numpy("SCALED"), x * 3)
        np.testing.assert_allclose(result.as_numpy("TOTAL"), x.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_non_batching_graphdefs_and_chosen_signature(
    tf_server: RunningServer, protocol: ModuleType
) -> None:
    client = _client(protocol, tf_server)
    flat = client.infer("flat", [_input(protocol, "V", np.array([1, 2, 3], np.int64), "INT64")])
    assert flat.as_numpy("NEG").tolist() == [-1, -2, -3]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    graph = client.infer("graph", [_input(protocol, "x", x, "FP32")])
    np.testing.assert_allclose(graph.as_numpy("y"), 2 * x + 1)
    double = client.infer("double", [_input(protocol, "x", x, "FP32")])
    np.testing.assert_allclose(double.as_numpy("doubled"), 2 * x)
    initialized = client.infer("graph_init", [_input(protocol, "x", x, "FP32")])
    np.testing.assert_allclose(initialized.as_numpy("y"), x + 10)


def test_concurrent_requests_are_batched_and_answered_each(tf_server: RunningServer) -> None:
    """Dynamic batching over two instances: every request gets its own rows back."""

    def one(i: int) -> bool:
        protocol = PROTOCOLS[i % 2]
        client = _client(protocol, tf_server)
        try:
            a = np.full((1 + i % 3, 4), i, np.float32)
            b = np.arange(4, dtype=np.float32) * np.ones_like(a)
            result = client.infer(
                "add",
                [_input(protocol, "INPUT0", a, "FP32"), _input(protocol, "INPUT1", b, "FP32")],
            )
            return bool(np.array_equal(result.as_numpy("SUM"), a + b))
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(24)))
    client = httpclient.InferenceServerClient(tf_server.http_url)
    stats = client.get_inference_statistics("add")["model_stats"][0]
    client.close()
    assert stats["inference_count"] == sum(1 + i % 3 for i in range(24))


def test_kind_gpu_falls_back_to_cpu_when_allowed(tf_server: RunningServer) -> None:
    state, reason = _states(tf_server)["on_gpu"]
    assert state == "READY" and "run on the CPU" in reason


def test_config_and_model_mismatches_are_load_errors(tf_server: RunningServer) -> None:
    states = _states(tf_server)
    reasons = {name: reason for name, (state, reason) in states.items() if state == "UNAVAILABLE"}
    assert set(reasons) == {
        "bad_name",
        "bad_type",
        "bad_dims",
        "missing_input",
        "bad_signature",
        "bad_tag",
        "graph_no_config",
        "graph_bad_name",
        "corrupt",
    }
    for name, reason in reasons.items():
        assert f"TensorFlow model '{name}'" in reason
    assert "'INPUT9'" in reasons["bad_name"] and "INPUT0" in reasons["bad_name"]
    assert "'INPUT0'" in reasons["bad_type"] and "TYPE_INT32" in reasons["bad_type"]
    assert "'SUM'" in reasons["bad_dims"] and "[5]" in reasons["bad_dims"]
    assert "INPUT1" in reasons["missing_input"]
    assert "'nope'" in reasons["bad_signature"] and "serving_default" in reasons["bad_signature"]
    assert "no graph tagged 'double'" in reasons["bad_tag"] and "serve" in reasons["bad_tag"]
    assert "must name them" in reasons["graph_no_config"]
    assert "'y'" in reasons["graph_bad_name"] and "Placeholder" in reasons["graph_bad_name"]
    assert "saved_model" in reasons["corrupt"] or "SavedModel" in reasons["corrupt"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_request_tensorflow_rejects_is_a_clear_error(
    tf_server: RunningServer, protocol: ModuleType
) -> None:
    """Shapes the config allows but the graph cannot compute with: a client error in the
    protocol's format, and the instance serves on."""
    client = _client(protocol, tf_server)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("reshape", [_input(protocol, "X", np.ones((1, 3), np.float32), "FP32")])
    assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    message = caught.value.message()
    assert message.startswith("TensorFlow rejected the inputs: Input to reshape is a tensor")
    assert "node Reshape" in message and "Traceback" not in message
    good = client.infer("reshape", [_input(protocol, "X", np.ones((2, 2), np.float32), "FP32")])
    assert good.as_numpy("ROWS").shape == (1, 4)


def test_without_auto_complete_a_savedmodel_needs_its_config(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    """--disable-auto-complete-config (and --strict-model-config): the signature is only
    checked against the config, never used to fill it."""
    add = add_matmul_model(tmp_path / "built" / "model.savedmodel")
    _model(tmp_path / "repo", "bare", None, add)
    _model(tmp_path / "repo", "full", ADD_CONFIG, add)
    server = server_factory(
        model_repositories=(tmp_path / "repo",), auto_complete_config=False, strict_readiness=False
    )
    states = _states(server)
    assert states["full"] == ("READY", "")
    state, reason = states["bare"]
    assert state == "UNAVAILABLE" and "INPUT0" in reason


@pytest.mark.parametrize("model", ["tf_seq", "tf_seq_graph"])
@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["http", "grpc"])
def test_sequence_models_keep_their_state(
    tf_server: RunningServer, protocol: ModuleType, model: str
) -> None:
    client = _client(protocol, tf_server)
    base = 100 if protocol is grpcclient else 0
    try:

        def step(sequence: int, value: int, **flags: bool) -> int:
            given = _input(protocol, "INPUT", np.array([[value]], np.int32), "INT32")
            result = client.infer(model, [given], sequence_id=base + sequence, **flags)
            return int(result.as_numpy("OUTPUT")[0, 0])

        assert step(1, 1, sequence_start=True) == 1
        assert step(2, 10, sequence_start=True) == 10  # another sequence, its own state
        assert step(1, 2) == 3
        assert step(2, 5) == 15
        assert step(1, 4, sequence_end=True) == 7
        assert step(1, 1, sequence_start=True) == 1  # a new sequence starts from zero
    finally:
        client.close()
