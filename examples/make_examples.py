"""Generate the bundled example model repository (``examples/<model>/...``).

Run from the repository root::

    .venv/bin/python examples/make_examples.py

Needs the ``examples`` extra (onnx, scikit-learn, skl2onnx). Deterministic (fixed seeds), no
downloads. Every model is checked with ``onnx.checker``, run once in onnxruntime on sample data,
and every ``config.pbtxt`` is parsed as a Triton ``ModelConfig`` and cross-checked against the
ONNX graph's inputs and outputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

HERE = Path(__file__).resolve().parent
OPSET = 13
IR_VERSION = 8  # loadable by older onnxruntime builds too
SEED = 0
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Triton config data type -> ONNX element type (only the types these examples use).
CONFIG_TO_ONNX_TYPE = {
    "TYPE_INT32": TensorProto.INT32,
    "TYPE_FP32": TensorProto.FLOAT,
    "TYPE_STRING": TensorProto.STRING,
}


# --------------------------------------------------------------------------- ONNX helpers


def tensor(name: str, elem_type: int, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def finish_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """Wrap a graph in a model with the fixed opset / IR version and validate it."""
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="inferd-examples"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def run_once(model: onnx.ModelProto, feeds: dict[str, Any]) -> dict[str, Any]:
    """Run the model once on CPU in onnxruntime; return outputs by name."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


# --------------------------------------------------------------------------- models


def make_simple() -> onnx.ModelProto:
    """Triton's ``simple`` example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    shape: list[str | int] = ["batch", 16]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
        ],
        "simple",
        [tensor("INPUT0", TensorProto.INT32, shape), tensor("INPUT1", TensorProto.INT32, shape)],
        [tensor("OUTPUT0", TensorProto.INT32, shape), tensor("OUTPUT1", TensorProto.INT32, shape)],
    )
    model = finish_model(graph)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    out = run_once(model, {"INPUT0": a, "INPUT1": b})
    assert out["OUTPUT0"].dtype == np.int32
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    return model


def make_identity_fp32() -> onnx.ModelProto:
    """FP32 identity over a variable-length vector per batch item."""
    shape: list[str | int] = ["batch", "n"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
        "identity_fp32",
        [tensor("INPUT0", TensorProto.FLOAT, shape)],
        [tensor("OUTPUT0", TensorProto.FLOAT, shape)],
    )
    model = finish_model(graph)
    x = np.random.default_rng(SEED).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(run_once(model, {"INPUT0": x})["OUTPUT0"], x)
    return model


def make_bytes_identity() -> onnx.ModelProto:
    """STRING (BYTES) identity: one string per batch item."""
    shape: list[str | int] = ["batch", 1]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
        "bytes_identity",
        [tensor("INPUT0", TensorProto.STRING, shape)],
        [tensor("OUTPUT0", TensorProto.STRING, shape)],
    )
    model = finish_model(graph)
    words = np.array([["hello"], ["wörld"]], dtype=object)
    out = run_once(model, {"INPUT0": words})["OUTPUT0"]
    assert out.tolist() == words.tolist(), out
    print(f"  bytes_identity: str input -> {type(out[0, 0]).__name__} output: ok")
    report_bytes_input(model)
    return model


def report_bytes_input(model: onnx.ModelProto) -> None:
    """Report how onnxruntime treats an object array of ``bytes`` fed to a string input.

    Observed with onnxruntime 1.32: it does not raise, it converts each item with ``str()``, so
    ``b"hello"`` comes back as the text ``"b'hello'"``. Servers must decode bytes to str first.
    """
    texts = ["hello", "wörld"]
    raw = np.array([[t.encode()] for t in texts], dtype=object)
    try:
        out = run_once(model, {"INPUT0": raw})["OUTPUT0"].ravel().tolist()
    except Exception as exc:
        print(f"  bytes_identity: bytes input rejected: {type(exc).__name__}: {exc}")
        return
    verdict = "round-trips" if out == texts else "accepted but garbled (str() of bytes)"
    print(f"  bytes_identity: bytes input {verdict}: {raw.ravel().tolist()!r} -> {out!r}")


def train_digits() -> tuple[Any, np.ndarray, np.ndarray]:
    """Train a small MLP on sklearn's bundled digits; return (classifier, X_test, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), y, test_size=0.25, random_state=SEED, stratify=y
    )
    start = time.perf_counter()
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=SEED)
    clf.fit(x_train, y_train)
    seconds = time.perf_counter() - start
    print(
        f"  digits: MLP(64-32-10) trained in {seconds:.2f} s, {clf.n_iter_} iterations; "
        f"accuracy train {clf.score(x_train, y_train):.4f}, test {clf.score(x_test, y_test):.4f}"
    )
    return clf, x_test, y_test


def keep_only_output(model: onnx.ModelProto, output: str) -> None:
    """Drop every graph output but ``output`` and prune the nodes nobody needs any more."""
    kept = [o for o in model.graph.output if o.name == output]
    assert len(kept) == 1, f"no output {output!r}"
    del model.graph.output[:]
    model.graph.output.extend(kept)
    needed = {output}
    live: list[onnx.NodeProto] = []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    del model.graph.node[:]
    model.graph.node.extend(reversed(live))
    used_domains = {n.domain for n in model.graph.node} | {""}
    opsets = [o for o in model.opset_import if o.domain in used_domains]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    initializers = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)


def name_batch_dim(values: Any) -> None:
    """Give the (unnamed) leading dimension of each value the symbolic name ``batch``."""
    for value in values:
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"


def make_digits() -> tuple[onnx.ModelProto, np.ndarray]:
    """Convert the digits MLP to ONNX: input [batch, 64] FP32 -> probabilities [batch, 10]."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    clf, x_test, y_test = train_digits()
    model = convert_sklearn(
        clf,
        "digits",
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 1},
    )
    keep_only_output(model, "probabilities")
    name_batch_dim(model.graph.input)
    name_batch_dim(model.graph.output)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)

    probs = run_once(model, {"input": x_test})["probabilities"]
    assert probs.shape == (len(x_test), 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, clf.predict_proba(x_test), atol=1e-4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    onnx_accuracy = float((probs.argmax(axis=1) == y_test).mean())
    print(f"  digits: onnxruntime test accuracy {onnx_accuracy:.4f}")
    assert onnx_accuracy > 0.9
    sample = pick_samples(x_test, y_test, probs)
    return model, sample


def pick_samples(x: np.ndarray, y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Two correctly classified test images of different digits (for sample_input.json)."""
    correct = probs.argmax(axis=1) == y
    first = int(np.flatnonzero(correct & (y == 3))[0])
    second = int(np.flatnonzero(correct & (y == 7))[0])
    return x[[first, second]]


def sample_request(images: np.ndarray) -> dict[str, Any]:
    """KServe v2 JSON inference request body for the digits model."""
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(images.shape),
                "datatype": "FP32",
                "data": [float(v) for v in images.ravel()],
            }
        ],
        "outputs": [{"name": "probabilities"}],
    }


# --------------------------------------------------------------------------- configs

SIMPLE_CONFIG = """\
# Triton's "simple" example model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32).
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
dynamic_batching { }
"""

IDENTITY_FP32_CONFIG = """\
# FP32 identity: OUTPUT0 = INPUT0, a variable-length vector per batch item.
name: "identity_fp32"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

BYTES_IDENTITY_CONFIG = """\
# STRING (BYTES) identity: OUTPUT0 = INPUT0, one string per batch item.
name: "bytes_identity"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 1 ] } ]
"""

DIGITS_CONFIG = """\
# Handwritten digit classifier (sklearn MLP on load_digits): 8x8 image -> 10 class probabilities.
name: "digits"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ { name: "input" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
    label_filename: "labels.txt"
  }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""


def parse_config(text: str) -> Any:
    """Parse config.pbtxt text as Triton's ``inference.ModelConfig``."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def onnx_dims(value: onnx.ValueInfoProto) -> list[int]:
    """ONNX shape as Triton dims: symbolic or unknown dimensions become -1."""
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else -1 for d in dims]


def check_config_matches(config: Any, model: onnx.ModelProto) -> None:
    """Config inputs/outputs must agree with the ONNX graph's names, types and shapes."""
    batch = [-1] if config.max_batch_size > 0 else []
    pairs = [(config.input, model.graph.input), (config.output, model.graph.output)]
    for tensors, values in pairs:
        by_name = {v.name: v for v in values}
        assert sorted(by_name) == sorted(t.name for t in tensors), (list(by_name), tensors)
        for t in tensors:
            value = by_name[t.name]
            type_name = model_config_pb2.DataType.Name(t.data_type)
            assert CONFIG_TO_ONNX_TYPE[type_name] == value.type.tensor_type.elem_type, t.name
            assert onnx_dims(value) == batch + list(t.dims), (t.name, onnx_dims(value), t.dims)


# --------------------------------------------------------------------------- writing


def write_model_dir(name: str, model: onnx.ModelProto, config_text: str) -> Path:
    """Write ``<name>/config.pbtxt`` and ``<name>/1/model.onnx``; verify the config."""
    model_dir = HERE / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(config_text, encoding="utf-8")

    config = parse_config((model_dir / "config.pbtxt").read_text(encoding="utf-8"))
    assert config.name == name, (config.name, name)
    check_config_matches(config, onnx.load(model_dir / "1" / "model.onnx"))
    return model_dir


def write_digits_extras(model_dir: Path, samples: np.ndarray) -> None:
    labels = "".join(f"{label}\n" for label in DIGIT_NAMES)
    (model_dir / "labels.txt").write_text(labels, encoding="utf-8")
    body = json.dumps(sample_request(samples), indent=None, separators=(", ", ": "))
    (model_dir / "sample_input.json").write_text(body + "\n", encoding="utf-8")


def print_sizes() -> None:
    files = sorted(p for p in HERE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        print(f"  {path.stat().st_size:>8}  {path.relative_to(HERE.parent)}")


def main() -> None:
    print("building models:")
    write_model_dir("simple", make_simple(), SIMPLE_CONFIG)
    write_model_dir("identity_fp32", make_identity_fp32(), IDENTITY_FP32_CONFIG)
    write_model_dir("bytes_identity", make_bytes_identity(), BYTES_IDENTITY_CONFIG)
    digits, samples = make_digits()
    write_digits_extras(write_model_dir("digits", digits, DIGITS_CONFIG), samples)
    print("files (bytes):")
    print_sizes()


if __name__ == "__main__":
    main()
