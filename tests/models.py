"""Tiny real ONNX models and Triton repositories for tests, written with the onnx helper API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def identity_model(
    dtype: int = TensorProto.FLOAT, shape: tuple[str | int, ...] = ("batch", 4)
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", dtype, list(shape))],
        [helper.make_tensor_value_info("OUTPUT0", dtype, list(shape))],
    )
    return finish(graph)


def reshape_model() -> onnx.ModelProto:
    """FP32 ["batch", "n"] -> Reshape to [-1, 4]: fails at execution unless n*batch % 4 == 0."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 4])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["INPUT0", "shape"], ["OUTPUT0"])],
        "reshape",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["rows", 4])],
        initializer=[shape],
    )
    return finish(graph)


def double_model() -> onnx.ModelProto:
    """FP32 ["batch", "n"]: OUTPUT0 = 2 * INPUT0, OUTPUT1 = INPUT0 (shows what the model saw)."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["INPUT0", "two"], ["OUTPUT0"]),
            helper.make_node("Identity", ["INPUT0"], ["OUTPUT1"]),
        ],
        "double",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", "n"]),
        ],
        initializer=[two],
    )
    return finish(graph)


def conv_model(seed: int = 0) -> onnx.ModelProto:
    """FP32 "input" ["batch", 3, 16, 16] -> Conv 3x3 (8 channels) -> Relu -> global average
    pool -> Gemm -> "output" ["batch", 10], random weights: real GPU kernels to compare."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)
        for name, shape in (("w", (8, 3, 3, 3)), ("b", (8,)), ("fc", (8, 10)), ("fb", (10,)))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
            helper.make_node("Flatten", ["pool"], ["flat"]),
            helper.make_node("Gemm", ["flat", "fc", "fb"], ["output"]),
        ],
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        initializer=weights,
    )
    return finish(graph)


def nonzero_model() -> onnx.ModelProto:
    """FP32 "x" [4, 4] -> "indices" INT64 [2, n], where its elements are not zero (NonZero):
    an output whose shape only the data decides."""
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["indices"])],
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [2, "n"])],
    )
    return finish(graph)


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(
    repo: Path,
    name: str,
    model: onnx.ModelProto,
    config: str | None = None,
    versions: tuple[int, ...] = (1,),
) -> Path:
    """Write <repo>/<name>/<v>/model.onnx for each version, and config.pbtxt if given."""
    model_dir = repo / name
    for version in versions:
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        onnx.save(model, model_dir / str(version) / "model.onnx")
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir
