"""ONNX models with custom operators: the libraries `model_operations { op_library_filename }`
names are registered with every session, as Triton's onnxruntime backend does. The library is
onnxruntime-extensions' (real custom ops: `ai.onnx.contrib` StringUpper)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import RunningServer
from tests.models import write_model
from tests.wire import PROTOCOLS, infer, load_failure

extensions = pytest.importorskip("onnxruntime_extensions")


def upper_model() -> onnx.ModelProto:
    """BYTES ["n"] -> the same strings upper-cased, by a custom operator."""
    graph = helper.make_graph(
        [helper.make_node("StringUpper", ["TEXT"], ["UPPER"], domain="ai.onnx.contrib")],
        "upper",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("UPPER", TensorProto.STRING, ["n"])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.contrib", 1)],
    )
    model.ir_version = 8
    return model


def config(library: str) -> str:
    return (
        'max_batch_size: 0 input [{name: "TEXT" data_type: TYPE_STRING dims: [-1]}] '
        'output [{name: "UPPER" data_type: TYPE_STRING dims: [-1]}] '
        f'model_operations {{ op_library_filename: "{library}" }}'
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_with_custom_operators_loads_and_serves(
    tmp_path: Path, server_factory: Callable[..., RunningServer], protocol: str
) -> None:
    # Loading reads the graph (to check the config against it) with the library too.
    write_model(tmp_path, "upper", upper_model(), config(extensions.get_library_path()))
    server = server_factory(model_repositories=(tmp_path,))
    text = np.array([b"inferd", b"Triton"], dtype=np.object_)
    assert infer(server, protocol, "upper", {"TEXT": text})["UPPER"].tolist() == [
        b"INFERD",
        b"TRITON",
    ]


def test_a_library_that_does_not_load_fails_the_model_saying_which(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    missing = str(tmp_path / "libmissing_ops.so")
    write_model(tmp_path, "upper", upper_model(), config(missing))
    server = server_factory(model_repositories=(tmp_path,), strict_readiness=False)
    reason = load_failure(server)
    assert f"failed to register the custom operations library '{missing}'" in reason
